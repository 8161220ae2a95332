#include "tools/troupe/topology_input.hpp"

#include <fmt/format.h>

#include "runtime/core/install_layout.hpp"

namespace troupe::cli {

std::string topology_or_default(const std::string& file) {
  return file.empty() ? current_install_layout().default_topology().string() : file;
}

std::optional<loaded_topology> load_for_command(const std::string& file, plugin_registry& registry,
                                                const std::vector<std::string>& overrides) {
  topology_load_options options;
  options.registry = &registry;
  options.overrides = overrides;
  try {
    auto loaded = load_topology(file, options);
    for (const auto& w : loaded.warnings) fmt::print(stderr, "{}\n", to_string(w));
    return loaded;
  } catch (const topology_error& e) {
    fmt::print(stderr, "{}\n", format_diagnostics(e.diagnostics()));
    fmt::print(stderr, "{}: {} error{}\n", file, e.diagnostics().size(),
               e.diagnostics().size() == 1 ? "" : "s");
  } catch (const troupe::error& e) {
    fmt::print(stderr, "{}\n", e.what());
  }
  return std::nullopt;
}

}  // namespace troupe::cli
