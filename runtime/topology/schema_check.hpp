#pragma once

// The schema half of parsing a topology file (parse.cpp does the values): unknown sections and
// keys with the nearest valid name, missing required sections and keys, value types and
// choices, each at its file:line:column. Internal to runtime/topology.

#include <string>
#include <vector>

#include <toml++/toml.h>

#include "runtime/topology/topology.hpp"

namespace troupe {

/// Where a node came from: the topology file, or the --set override that put it there.
inline source_position position_of(const toml::source_region& region, const std::string& file) {
  const bool overridden = region.path != nullptr && *region.path != file;
  return {overridden ? *region.path : file, static_cast<int>(region.begin.line),
          static_cast<int>(region.begin.column)};
}

/// Checks `root` (the file of `topo.file`) against the topology schema, adding one diagnostic
/// per problem, and records every section's and key's position in `topo.positions`.
void check_against_schema(const toml::table& root, topology& topo,
                          std::vector<diagnostic>& diagnostics);

}  // namespace troupe
