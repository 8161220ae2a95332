#include "runtime/topology/diagnostic.hpp"

namespace troupe {

std::string to_string(const diagnostic& d) {
  return fmt::format("{}: {}: {}", to_string(d.where),
                     d.level == diagnostic::severity::error ? "error" : "warning", d.message);
}

std::string format_diagnostics(const std::vector<diagnostic>& diagnostics, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < diagnostics.size() && i < limit; ++i) {
    if (!out.empty()) out += '\n';
    out += to_string(diagnostics[i]);
  }
  if (diagnostics.size() > limit)
    out += fmt::format("\n... and {} more", diagnostics.size() - limit);
  return out;
}

topology_error::topology_error(std::vector<diagnostic> diagnostics)
    : error(format_diagnostics(diagnostics)), diagnostics_(std::move(diagnostics)) {}

}  // namespace troupe
