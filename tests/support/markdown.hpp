#pragma once

// Reading the Markdown tables troupe's docs keep in step with the code (docs/topology.md,
// monitoring/METRICS.md). Plain string handling: std::regex costs build time and trips GCC 12's
// -Wmaybe-uninitialized in sanitizer builds.

#include <optional>
#include <string>

namespace troupe::testing {

/// "x" for a table row that starts with "| `x` |", else nullopt.
inline std::optional<std::string> table_key(const std::string& line) {
  if (!line.starts_with("| `")) return std::nullopt;
  const auto end = line.find("` |", 3);
  if (end == std::string::npos) return std::nullopt;
  return line.substr(3, end - 3);
}

/// "x" for a heading "## [x]..." or "## [[x]]...", else nullopt.
inline std::optional<std::string> section_heading(const std::string& line) {
  if (!line.starts_with("## [")) return std::nullopt;
  std::size_t begin = 4;
  if (line.size() > begin && line[begin] == '[') ++begin;
  const auto end = line.find(']', begin);
  if (end == std::string::npos) return std::nullopt;
  return line.substr(begin, end - begin);
}

}  // namespace troupe::testing
