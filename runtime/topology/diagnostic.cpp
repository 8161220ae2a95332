#include "runtime/topology/diagnostic.hpp"

namespace troupe {

std::string to_string(const diagnostic& d) {
  return fmt::format("{}: {}: {}", to_string(d.where),
                     d.level == diagnostic::severity::error ? "error" : "warning", d.message);
}

namespace {
std::string join_diagnostics(const std::vector<diagnostic>& diagnostics) {
  std::string out;
  for (const auto& d : diagnostics) {
    if (!out.empty()) out += '\n';
    out += to_string(d);
  }
  return out;
}
}  // namespace

topology_error::topology_error(std::vector<diagnostic> diagnostics)
    : error(join_diagnostics(diagnostics)), diagnostics_(std::move(diagnostics)) {}

}  // namespace troupe
