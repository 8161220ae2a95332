#include <fmt/format.h>

#include "runtime/core/install_layout.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/topology/load.hpp"
#include "runtime/topology/plan.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

int train(const std::string& file) {
  const std::string path =
      file.empty() ? current_install_layout().default_topology().string() : file;
  plugin_registry registry;
  topology_load_options options;
  options.registry = &registry;
  try {
    auto loaded = load_topology(path, options);
    for (const auto& w : loaded.warnings) fmt::print(stderr, "{}\n", to_string(w));
    const auto plan = plan_topology(loaded.topo);
    fmt::print(stderr,
               "troupe train: {} is valid ({} actors in {} process(es)), but training is not built "
               "into this "
               "version of troupe yet; nothing was run.\n",
               path, plan.actors.size(), plan.processes.size());
    return exit_unavailable;
  } catch (const topology_error& e) {
    for (const auto& d : e.diagnostics()) fmt::print(stderr, "{}\n", to_string(d));
  } catch (const troupe::error& e) {
    fmt::print(stderr, "{}\n", e.what());
  }
  return exit_bad_input;
}

}  // namespace

void add_train_command(CLI::App& app, int& exit_code) {
  auto file = std::make_shared<std::string>();
  auto* command =
      app.add_subcommand("train", "Train the model of a topology (default: the shipped tiny.toml)");
  command->add_option("TOPOLOGY", *file,
                      "Topology file (TOML); default: tiny.toml from the install or source tree");
  command->callback([file, &exit_code] { exit_code = train(*file); });
}

}  // namespace troupe::cli
