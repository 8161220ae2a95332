#pragma once

// Loading the topology a subcommand works on, with its diagnostics printed for the user.

#include <optional>
#include <string>
#include <vector>

#include "runtime/plugin/registry.hpp"
#include "runtime/topology/load.hpp"

namespace troupe::cli {

/// The shipped default topology (tiny.toml) when `file` is empty, else `file`.
std::string topology_or_default(const std::string& file);

/// Loads and validates `file` with `overrides` (KEY=VALUE); prints warnings and errors
/// (file:line:column) to stderr. Returns nullopt when the topology is not valid.
std::optional<loaded_topology> load_for_command(const std::string& file, plugin_registry& registry,
                                                const std::vector<std::string>& overrides = {});

}  // namespace troupe::cli
