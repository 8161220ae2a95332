#include "runtime/core/text.hpp"

#include <algorithm>
#include <charconv>

#include "runtime/core/error.hpp"

namespace troupe {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string nearest_word(std::string_view word, std::span<const std::string> candidates) {
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& candidate : candidates) {
    std::size_t d = edit_distance(word, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

std::string join(std::span<const std::string> items, std::string_view separator) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += separator;
    out += items[i];
  }
  return out;
}

namespace {

int parse_int(std::string_view text, std::string_view whole) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value < 0)
    fail("'{}' in \"{}\" is not a non-negative integer", text, whole);
  return value;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

}  // namespace

std::vector<int> parse_index_ranges(std::string_view text, int limit) {
  std::vector<int> out;
  std::string_view rest = text;
  while (true) {
    auto comma = rest.find(',');
    std::string_view part = trim(rest.substr(0, comma));
    if (part.empty()) fail("empty item in index list \"{}\"", text);
    auto dash = part.find('-');
    const int first = parse_int(trim(part.substr(0, dash)), text);
    const int last =
        dash == std::string_view::npos ? first : parse_int(trim(part.substr(dash + 1)), text);
    if (last < first) fail("range '{}' in \"{}\" runs backwards", part, text);
    // NOTES: a range is expanded only below `limit`: "0-2147483647" must not allocate (or loop
    // on `i <= INT_MAX`). What lies beyond is kept as one index, so the caller's check still
    // reports it ("layer 4 does not exist") once.
    for (int i = first; i <= last && i < limit; ++i) out.push_back(i);
    if (last >= limit) out.push_back(std::max(first, limit));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string format_index_ranges(std::span<const int> indices) {
  std::string out;
  for (std::size_t i = 0; i < indices.size();) {
    std::size_t j = i;
    while (j + 1 < indices.size() && indices[j + 1] == indices[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j > i ? fmt::format("{}-{}", indices[i], indices[j]) : fmt::format("{}", indices[i]);
    i = j + 1;
  }
  return out;
}

}  // namespace troupe
