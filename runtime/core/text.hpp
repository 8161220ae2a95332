#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

/// Levenshtein distance: the number of single-character edits that turn `a` into `b`.
std::size_t edit_distance(std::string_view a, std::string_view b);

/// The candidate closest to `word` by edit distance, or "" when none is close enough to be a
/// plausible typo (distance above a third of the word's length, at least 2).
std::string nearest_word(std::string_view word, std::span<const std::string> candidates);

/// Joins `items` with `separator`.
std::string join(std::span<const std::string> items, std::string_view separator);

/// Parses "0-3,7,9-10" into the sorted list of integers it names. Throws troupe::error naming
/// the offending part. Ranges are expanded only below `limit`: the part of an item at or beyond
/// it becomes one index (its first), for the caller to report.
std::vector<int> parse_index_ranges(std::string_view text, int limit = 1 << 20);

/// Formats a sorted list of integers compactly: {0,1,2,5} -> "0-2,5".
std::string format_index_ranges(std::span<const int> indices);

}  // namespace troupe
