#include "runtime/core/input_limits.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace troupe {

namespace fs = std::filesystem;

std::string read_text_file(const fs::path& file, std::string_view what, std::uintmax_t limit) {
  std::error_code ec;
  if (fs::is_directory(file, ec))
    fail("{}: cannot read the {}: it is a directory", file.string(), what);
  std::ifstream in(file, std::ios::binary);
  if (!in) fail("{}: cannot read the {}: {}", file.string(), what, std::strerror(errno));
  std::string text;
  char chunk[1 << 16];
  while (in.read(chunk, sizeof chunk) || in.gcount() > 0) {
    text.append(chunk, static_cast<std::size_t>(in.gcount()));
    if (text.size() > limit)
      fail("{}: the {} is larger than {} MiB: not a file troupe reads whole", file.string(), what,
           limit >> 20);
  }
  if (in.bad()) fail("{}: cannot read the {}: {}", file.string(), what, std::strerror(errno));
  return text;
}

std::string describe_bounds(integer_bounds bounds) {
  if (bounds.max == std::numeric_limits<std::int64_t>::max())
    return fmt::format("at least {}", bounds.min);
  return fmt::format("between {} and {}", bounds.min, bounds.max);
}

void fail_out_of_range(std::int64_t value, integer_bounds bounds, std::string_view what) {
  fail("{} = {} is out of range: it must be {}", what, value, describe_bounds(bounds));
}

nlohmann::json parse_json(std::string_view text, std::string_view where) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // NOTES: not only parse_error: a number beyond double range (1e400) is an out_of_range.
    fail("{}: not valid JSON: {}", where, e.what());
  }
}

nlohmann::json read_json_file(const fs::path& file, std::string_view what, std::uintmax_t limit) {
  return parse_json(read_text_file(file, what, limit), file.string());
}

std::int64_t json_integer(const nlohmann::json& value, integer_bounds bounds,
                          std::string_view where) {
  if (value.is_number_unsigned() &&
      value.get<std::uint64_t>() > static_cast<std::uint64_t>(bounds.max))
    fail("{} = {} is out of range: it must be {}", where, value.dump(), describe_bounds(bounds));
  if (!value.is_number_integer()) fail("{} must be an integer, got {}", where, value.dump());
  const auto v = value.get<std::int64_t>();
  if (v < bounds.min || v > bounds.max) fail_out_of_range(v, bounds, where);
  return v;
}

double json_number(const nlohmann::json& value, std::string_view where) {
  if (!value.is_number()) fail("{} must be a number, got {}", where, value.dump());
  const double v = value.get<double>();
  if (!std::isfinite(v)) fail("{} must be a finite number, got {}", where, value.dump());
  return v;
}

std::string json_string(const nlohmann::json& object, std::string_view key, std::string fallback,
                        std::string_view where) {
  if (!object.is_object()) return fallback;
  const auto it = object.find(key);
  if (it == object.end()) return fallback;
  if (!it->is_string()) fail("{}: \"{}\" must be a string, got {}", where, key, it->dump());
  return it->get<std::string>();
}

bool json_bool(const nlohmann::json& object, std::string_view key, bool fallback,
               std::string_view where) {
  if (!object.is_object()) return fallback;
  const auto it = object.find(key);
  if (it == object.end()) return fallback;
  if (!it->is_boolean()) fail("{}: \"{}\" must be true or false, got {}", where, key, it->dump());
  return it->get<bool>();
}

}  // namespace troupe
