#pragma once

#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/core/source_position.hpp"

namespace troupe {

/// One finding about a topology: where, how bad, what is wrong and what is allowed.
struct diagnostic {
  enum class severity { error, warning };
  source_position where;
  severity level = severity::error;
  std::string message;
};

/// "file:line:column: error: message".
std::string to_string(const diagnostic& d);

/// The diagnostics one per line, at most `limit` of them and then "... and N more errors": one
/// mistake repeated over fifty million layers must not print fifty million lines.
std::string format_diagnostics(const std::vector<diagnostic>& diagnostics, std::size_t limit = 20);

/// A topology that did not validate; carries every error found, not just the first.
class topology_error : public error {
 public:
  explicit topology_error(std::vector<diagnostic> diagnostics);
  const std::vector<diagnostic>& diagnostics() const { return diagnostics_; }

 private:
  std::vector<diagnostic> diagnostics_;
};

}  // namespace troupe
