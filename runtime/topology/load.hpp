#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/topology/diagnostic.hpp"
#include "runtime/topology/topology.hpp"

namespace troupe {

class plugin_registry;

struct topology_load_options {
  /// Look up each role's plugin on the search path (an explicitly named plugin that is missing
  /// is an error; a missing default is a warning).
  bool resolve_plugins = true;
  /// When set, found plugins are also loaded to check their kind against the role.
  plugin_registry* registry = nullptr;
  /// KEY=VALUE overrides applied before validation (overrides.hpp), like `troupe train --set`.
  std::vector<std::string> overrides;
};

/// A topology that passed validation, with the warnings it produced.
struct loaded_topology {
  topology topo;
  std::vector<diagnostic> warnings;
};

/// Reads, parses and validates a topology file. Throws topology_error listing every problem with
/// file:line:column, what is wrong and what is allowed; troupe::error when the file is unreadable.
loaded_topology load_topology(const std::filesystem::path& file,
                              const topology_load_options& options = {});

/// The same for TOML text; `file` names it in diagnostics and anchors relative paths.
loaded_topology load_topology_text(std::string_view text, const std::filesystem::path& file,
                                   const topology_load_options& options = {});

namespace detail {
/// Checks the parsed topology's meaning (coverage, sizes, placements, plugins), filling derived
/// values (the even expert split, resolved plugin files). Appends to `diagnostics`.
void validate_topology(topology& topo, const topology_load_options& options,
                       std::vector<diagnostic>& diagnostics);
}  // namespace detail

}  // namespace troupe
