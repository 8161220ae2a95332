#pragma once

#include <string>

namespace troupe {

/// A place in a text file (1-based line and column; 0 when unknown).
struct source_position {
  std::string file;
  int line = 0;
  int column = 0;
};

/// "file:line:column" (or less, when parts are unknown).
std::string to_string(const source_position& where);

}  // namespace troupe
