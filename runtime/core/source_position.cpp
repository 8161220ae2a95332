#include "runtime/core/source_position.hpp"

#include <fmt/format.h>

namespace troupe {

std::string to_string(const source_position& where) {
  if (where.line <= 0) return where.file;
  if (where.column <= 0) return fmt::format("{}:{}", where.file, where.line);
  return fmt::format("{}:{}:{}", where.file, where.line, where.column);
}

}  // namespace troupe
