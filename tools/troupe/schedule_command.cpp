// troupe schedule: a topology's pipeline schedule as a per-rank text timeline with its bubble.
#include <fmt/format.h>

#include "runtime/schedule/timeline.hpp"
#include "runtime/topology/topology.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/topology_input.hpp"

namespace troupe::cli {

namespace {

struct schedule_options {
  std::string file;
  std::vector<std::string> overrides;
  std::int64_t micro_batches = 0;
  std::vector<double> costs = {1, 2, 1, 3};
};

int show(const schedule_options& options) {
  plugin_registry registry;
  const std::string file = topology_or_default(options.file);
  auto loaded = load_for_command(file, registry, options.overrides);
  if (!loaded) return exit_bad_input;
  const topology& topo = loaded->topo;
  const std::int64_t micro_batches =
      options.micro_batches > 0 ? options.micro_batches : topo.schedule.micro_batches;
  const op_costs costs{options.costs[0], options.costs[1], options.costs[2], options.costs[3]};
  try {
    const auto plan = schedule_plan::build(topo.schedule.kind, topo.pipeline, micro_batches);
    const timeline played = simulate(plan, costs);
    fmt::print("{}: {} schedule, {} pipeline rank{}, {} micro-batches per step\n", file,
               to_string(plan.kind()), plan.ranks(), plan.ranks() == 1 ? "" : "s", micro_batches);
    fmt::print("costs: F {:g}, B {:g} (input part b {:g}, weight part W {:g}), F&B {:g}\n",
               costs.forward, costs.backward, costs.backward - costs.weight, costs.weight,
               costs.forward_backward);
    fmt::print(
        "ops: Fm forward, Bm backward, bm its input-gradient part, Wm its deferred weight part, "
        "'.' idle\n\n");
    fmt::print("{}\n", render_timeline(played));
    fmt::print("bubble: {:g} (the largest of the ranks'; {} = {:g}), step {:g}\n",
               played.max_bubble(), bubble_formula(plan.kind()), predicted_bubble(plan, costs),
               played.makespan);
    return exit_ok;
  } catch (const troupe::error& e) {
    fmt::print(stderr, "{}: {}\n", file, e.what());
    return exit_bad_input;
  }
}

}  // namespace

void add_schedule_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<schedule_options>();
  auto* command = app.add_subcommand(
      "schedule", "Print a topology's pipeline schedule as a per-rank timeline with its bubble");
  command->add_option("TOPOLOGY", options->file, "Topology file (default: the shipped tiny.toml)");
  command
      ->add_option("--set", options->overrides,
                   "Override a topology key, KEY=VALUE (e.g. schedule.kind=dualpipe); repeatable")
      ->allow_extra_args(false);
  command
      ->add_option("--micro-batches", options->micro_batches,
                   "Micro-batches per step (default: the topology's schedule.micro_batches)")
      ->check(within({1, 65536}));
  command
      ->add_option("--costs", options->costs,
                   "Chunk costs F,B,W,F&B (default 1,2,1,3: the input part of a backward costs "
                   "what a forward does)")
      ->delimiter(',')
      ->expected(4);
  command->callback([options, &exit_code] { exit_code = show(*options); });
}

}  // namespace troupe::cli
