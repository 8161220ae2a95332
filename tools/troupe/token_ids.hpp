#pragma once

// Token ids given on the command line: "5,17,42".

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/core/error.hpp"

namespace troupe::cli {

/// The comma-separated ids of `text`, each in [0, vocab_size); troupe::error naming `option` and
/// the bad item otherwise, or when there is none.
inline std::vector<std::int32_t> parse_token_ids(std::string_view text, std::int64_t vocab_size,
                                                 const char* option) {
  std::vector<std::int32_t> ids;
  std::string_view rest = text;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    const std::string item(rest.substr(0, comma));
    std::size_t used = 0;
    long value = -1;
    try {
      value = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || value < 0 || value >= vocab_size)
      fail("{}: '{}' is not a token id in [0, {})", option, item, vocab_size);
    ids.push_back(static_cast<std::int32_t>(value));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (ids.empty()) fail("{}: give at least one token id", option);
  return ids;
}

}  // namespace troupe::cli
