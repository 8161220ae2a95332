// `troupe eplb`: DeepSeek's expert-parallel load balancer (runtime/placement/eplb.hpp) on loads
// from a file (a JSON matrix, a `troupe train --log-json` file, a Prometheus query result): the
// physical-to-logical map, the logical-to-physical map and the replica counts of every layer,
// and each device's load against the experts in order without replicas; --json prints one
// object with phy2log, log2phy and logcnt per layer, as DeepSeek's rebalance_experts returns
// them.
#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/placement/eplb.hpp"
#include "runtime/placement/expert_load.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

struct eplb_options {
  std::string load;
  std::int64_t replicas = 0, groups = 1, nodes = 1, devices = 1;
  bool json = false;
};

std::vector<std::int64_t> row(const std::vector<std::int64_t>& values, std::int64_t index,
                              std::int64_t width) {
  return {values.begin() + index * width, values.begin() + (index + 1) * width};
}

int eplb(const eplb_options& o) {
  const expert_loads loads = read_expert_loads(o.load);
  const auto layers = static_cast<std::int64_t>(loads.layers.size());
  const std::int64_t replicas = o.replicas > 0 ? o.replicas : loads.experts;
  const eplb_plan plan = rebalance_experts(loads.load, layers, loads.experts,
                                           {replicas, o.groups, o.nodes, o.devices});
  if (o.json) {
    nlohmann::json out{{"layers", loads.layers},
                       {"policy", plan.hierarchical ? "hierarchical" : "global"},
                       {"phy2log", nlohmann::json::array()},
                       {"log2phy", nlohmann::json::array()},
                       {"logcnt", nlohmann::json::array()}};
    for (std::int64_t l = 0; l < layers; ++l) {
      out["phy2log"].push_back(row(plan.phy2log, l, plan.physical));
      out["logcnt"].push_back(row(plan.logcnt, l, plan.logical));
      nlohmann::json experts = nlohmann::json::array();
      for (std::int64_t e = 0; e < plan.logical; ++e)
        experts.push_back(row(plan.log2phy, l * plan.logical + e, plan.max_replicas));
      out["log2phy"].push_back(experts);
    }
    fmt::print("{}\n", out.dump());
    return exit_ok;
  }
  fmt::print(
      "{}: {} layers of {} experts ({}); {} replicas on {} devices of {} nodes, {} groups: {} "
      "policy\n",
      o.load, layers, loads.experts, loads.format, replicas, o.devices, o.nodes, o.groups,
      plan.hierarchical ? "hierarchical" : "global");
  const std::int64_t per_device = plan.physical / o.devices;
  for (std::int64_t l = 0; l < layers; ++l) {
    fmt::print("layer {}\n  phy2log: {}\n  logcnt:  {}\n",
               loads.layers[static_cast<std::size_t>(l)], row(plan.phy2log, l, plan.physical),
               row(plan.logcnt, l, plan.logical));
    const auto placed = plan.device_load(loads.load, l, o.devices);
    double total = 0.0;
    for (const double v : placed) total += v;
    const double mean = total / static_cast<double>(o.devices);
    std::vector<double> plain(static_cast<std::size_t>(o.devices), 0.0);
    if (loads.experts % o.devices == 0)
      for (std::int64_t e = 0; e < loads.experts; ++e)
        plain[static_cast<std::size_t>(e / (loads.experts / o.devices))] +=
            static_cast<double>(loads.load[static_cast<std::size_t>(l * loads.experts + e)]);
    fmt::print("  devices ({} slots each): max/mean load {:.3f}", per_device,
               mean > 0.0 ? *std::max_element(placed.begin(), placed.end()) / mean : 0.0);
    if (loads.experts % o.devices == 0 && mean > 0.0)
      fmt::print(" (experts in order, no replicas: {:.3f})",
                 *std::max_element(plain.begin(), plain.end()) / mean);
    fmt::print("\n");
  }
  return exit_ok;
}

}  // namespace

void add_eplb_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<eplb_options>();
  auto* command = app.add_subcommand(
      "eplb",
      "DeepSeek's expert-parallel load balancer: replicas of the heaviest experts and their "
      "placement on devices, from per-layer expert loads");
  command
      ->add_option("--load", o->load,
                   "Loads: a JSON matrix [[...], ...] or {\"LAYER\": [...]}, a `troupe train "
                   "--log-json` file, or a Prometheus query result of "
                   "troupe_expert_tokens_routed_total")
      ->required()
      ->check(CLI::ExistingFile);
  command
      ->add_option("--replicas", o->replicas,
                   "Physical experts per layer, a multiple of --devices (default: the experts)")
      ->check(within({1, 1 << 20}));
  command->add_option("--groups", o->groups, "Expert groups (n_group)")
      ->check(within({1, 1 << 20}))
      ->capture_default_str();
  command->add_option("--nodes", o->nodes, "Nodes")
      ->check(within({1, 1 << 20}))
      ->capture_default_str();
  command->add_option("--devices", o->devices, "Devices (GPUs), a multiple of --nodes")
      ->check(within({1, 1 << 20}))
      ->capture_default_str();
  command->add_flag("--json", o->json,
                    "One JSON object: phy2log, log2phy (-1 past a count) and logcnt per layer");
  command->callback([o, &exit_code] {
    try {
      exit_code = eplb(*o);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe eplb: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
