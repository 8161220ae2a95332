#include <cstdio>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/plugin/registry.hpp"
#include "runtime/topology/load.hpp"
#include "runtime/topology/machine_check.hpp"
#include "runtime/topology/plan.hpp"
#include "runtime/topology/schema.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/topology_input.hpp"

namespace troupe::cli {

namespace {

struct topo_options {
  std::string file;
  std::string output;
  bool quiet = false;
  bool for_this_machine = false;
  std::vector<std::string> hosts;
};

int check(const topo_options& options) {
  plugin_registry registry;
  auto loaded = load_for_command(options.file, registry);
  if (!loaded) return exit_bad_input;
  if (options.for_this_machine) {
    for (const auto& host : options.hosts)
      if (loaded->topo.find_host(host) == nullptr) {
        fmt::print(stderr, "{}: --host {}: the topology has no such host\n", options.file, host);
        return exit_bad_input;
      }
    const auto problems = check_devices(loaded->topo, machine_devices::here(), options.hosts);
    if (!problems.empty()) {
      fmt::print(stderr, "{}\n", format_diagnostics(problems));
      fmt::print(stderr, "{}: {} placement{} this machine cannot honour\n", options.file,
                 problems.size(), problems.size() == 1 ? "" : "s");
      return exit_bad_input;
    }
  }
  if (!options.quiet) {
    fmt::print("{}: OK{}\n", options.file, options.for_this_machine ? " for this machine" : "");
    fmt::print("{}", summarize(loaded->topo, plan_topology(loaded->topo)));
  }
  return exit_ok;
}

int dot(const topo_options& options) {
  plugin_registry registry;
  auto loaded = load_for_command(options.file, registry);
  if (!loaded) return exit_bad_input;
  const std::string graph = to_dot(loaded->topo, plan_topology(loaded->topo));
  if (options.output.empty() || options.output == "-") {
    fmt::print("{}", graph);
    return exit_ok;
  }
  std::ofstream out(options.output);
  out << graph;
  if (!out) {
    fmt::print(stderr, "cannot write {}\n", options.output);
    return exit_bad_input;
  }
  return exit_ok;
}

std::string_view type_name(value_kind kind) {
  switch (kind) {
    case value_kind::string:
      return "string";
    case value_kind::integer:
      return "integer";
    case value_kind::number:
      return "number";
    case value_kind::boolean:
      return "boolean";
    case value_kind::string_list:
      return "array of strings";
    case value_kind::index_list:
      return "index list";
    case value_kind::device_list:
      return "device or array of devices";
    case value_kind::host_list:
      return "host or array of hosts";
    case value_kind::table:
      return "table";
  }
  return "value";
}

/// The reference of every section and key, as Markdown tables (docs/topology.md embeds them).
int keys() {
  for (const auto& section : topology_schema()) {
    fmt::print("## {}{}{}{}\n\n{}{}\n\n", section.array ? "[[" : "[", section.name,
               section.array ? "]]" : "]", section.required ? " (required)" : "",
               section.description, section.array ? " Repeat the header once per entry." : "");
    fmt::print("| key | type | default | meaning |\n|---|---|---|---|\n");
    for (const auto& key : section.keys) {
      std::string meaning(key.description);
      if (!key.choices.empty()) {
        std::vector<std::string> choices;
        for (auto c : key.choices) choices.push_back(fmt::format("`{}`", c));
        meaning += fmt::format(" One of: {}.", fmt::join(choices, ", "));
      }
      const std::string default_text = key.required               ? std::string("required")
                                       : key.default_text.empty() ? std::string("—")
                                                                  : std::string(key.default_text);
      fmt::print("| `{}` | {} | {} | {} |\n", key.name, type_name(key.kind), default_text, meaning);
    }
    fmt::print("\n");
  }
  return exit_ok;
}

}  // namespace

void add_topo_command(CLI::App& app, int& exit_code) {
  auto* topo = app.add_subcommand("topo", "Check and draw topology files");
  topo->require_subcommand(1);

  auto check_options = std::make_shared<topo_options>();
  auto* check_command = topo->add_subcommand(
      "check",
      "Parse and validate a topology (model config, parallel sizes, layer and expert coverage, "
      "placements, schedule, plugins) and print its plan; errors give file:line:column");
  check_command->add_option("FILE", check_options->file, "Topology file (TOML)")
      ->required()
      ->check(CLI::ExistingFile);
  check_command->add_flag("-q,--quiet", check_options->quiet,
                          "Print nothing when the topology is valid");
  check_command->add_flag("--for-this-machine", check_options->for_this_machine,
                          "Also check that this machine has every device the topology places "
                          "work on (CUDA built in, each cuda:N present)");
  check_command->add_option("--host", check_options->hosts,
                            "With --for-this-machine: check only the placements on these hosts "
                            "(default: every host)");
  check_command->callback([check_options, &exit_code] { exit_code = check(*check_options); });

  auto dot_options = std::make_shared<topo_options>();
  auto* dot_command = topo->add_subcommand(
      "dot", "Print the topology's actors and links as Graphviz DOT (render with: dot -Tsvg)");
  dot_command->add_option("FILE", dot_options->file, "Topology file (TOML)")
      ->required()
      ->check(CLI::ExistingFile);
  dot_command->add_option("-o,--output", dot_options->output,
                          "Write to this file instead of stdout");
  dot_command->callback([dot_options, &exit_code] { exit_code = dot(*dot_options); });

  auto* keys_command = topo->add_subcommand(
      "keys", "Print the reference of every topology section and key (Markdown)");
  keys_command->callback([&exit_code] { exit_code = keys(); });
}

}  // namespace troupe::cli
