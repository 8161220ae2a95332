#pragma once
// Reading untrusted input: files read whole only up to a size cap, integers only inside their
// bounds (no narrowing), JSON whose every failure (bad syntax, a number that does not fit) is a
// troupe::error naming the file. Everything troupe reads from a user goes through these.

#include <concepts>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace troupe {

/// The largest text file troupe reads whole (a topology, a config.json, a shard index, a
/// trainer_state.json): 64 MiB. Real ones are kilobytes; anything larger is a mistake (or
/// /dev/zero).
inline constexpr std::uintmax_t max_text_file_bytes = std::uintmax_t{64} << 20;

/// The whole of `file`. Fails naming `what` and the path when the file cannot be opened, is a
/// directory, or holds more than `limit` bytes (checked while reading, so devices and pipes
/// that never end fail too).
std::string read_text_file(const std::filesystem::path& file, std::string_view what,
                           std::uintmax_t limit = max_text_file_bytes);

/// Inclusive bounds of an integer read from input.
struct integer_bounds {
  std::int64_t min = 0;
  std::int64_t max = std::numeric_limits<std::int32_t>::max();
};

/// The bounds of T itself, intersected with `bounds`.
template <std::integral T>
constexpr integer_bounds bounds_within(integer_bounds bounds) {
  constexpr auto lo = static_cast<std::int64_t>(std::numeric_limits<T>::min());
  constexpr auto hi = std::numeric_limits<T>::max() > std::numeric_limits<std::int64_t>::max()
                          ? std::numeric_limits<std::int64_t>::max()
                          : static_cast<std::int64_t>(std::numeric_limits<T>::max());
  return {bounds.min < lo ? lo : bounds.min, bounds.max > hi ? hi : bounds.max};
}

/// "must be between MIN and MAX" (or "at least MIN" when MAX is the largest int64), for messages.
std::string describe_bounds(integer_bounds bounds);

/// `value` as a T when it lies within `bounds` and T; otherwise fails with "`what` = VALUE is
/// out of range: it must be ...".
template <std::integral T>
T checked_integer(std::int64_t value, integer_bounds bounds, std::string_view what);

/// Parses `text` as JSON. Any failure, a syntax error as much as a number beyond double range
/// (1e400), fails as "`where`: not valid JSON: ...".
nlohmann::json parse_json(std::string_view text, std::string_view where);

/// read_text_file + parse_json.
nlohmann::json read_json_file(const std::filesystem::path& file, std::string_view what,
                              std::uintmax_t limit = max_text_file_bytes);

/// `value` as an integer within `bounds`: fails naming `where` when it is not an integer (1.5,
/// "3", 2^64-1 beyond int64) or lies outside.
std::int64_t json_integer(const nlohmann::json& value, integer_bounds bounds,
                          std::string_view where);

/// `value` as a finite number: fails naming `where` when it is not a number.
double json_number(const nlohmann::json& value, std::string_view where);

/// `object[key]` as a string, or `fallback` when `object` has no such key. Fails naming `where`
/// (the file or request) and the key when the value is not a string; nlohmann's own
/// `value(key, fallback)` throws a type_error instead, which nothing above expects.
std::string json_string(const nlohmann::json& object, std::string_view key, std::string fallback,
                        std::string_view where);

/// `object[key]` as true or false, or `fallback` when absent; fails like json_string.
bool json_bool(const nlohmann::json& object, std::string_view key, bool fallback,
               std::string_view where);

// ---- implementation ---------------------------------------------------------------------------

[[noreturn]] void fail_out_of_range(std::int64_t value, integer_bounds bounds,
                                    std::string_view what);

template <std::integral T>
T checked_integer(std::int64_t value, integer_bounds bounds, std::string_view what) {
  const integer_bounds b = bounds_within<T>(bounds);
  if (value < b.min || value > b.max) fail_out_of_range(value, b, what);
  return static_cast<T>(value);
}

}  // namespace troupe
