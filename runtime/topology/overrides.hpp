#pragma once

// `--set KEY=VALUE` overrides of topology keys, applied to the parsed TOML before any check, so
// an override is validated exactly like the file (and its diagnostics name the --set argument).
//   parallel.pipeline=2          a key of a section (the value is TOML: 2, 1e-3, true, "x", [1, 2])
//   schedule.kind=dualpipe       a bare word is taken as a string
//   stages[1].layers=2-3         an entry of a list of tables

#include <string>
#include <vector>

#include <toml++/toml.h>

namespace troupe {

/// Applies each override in order. Throws topology_error for one that is not KEY=VALUE, indexes
/// past a list's end, or goes through a key that is not a table.
void apply_overrides(toml::table& root, const std::vector<std::string>& overrides);

}  // namespace troupe
