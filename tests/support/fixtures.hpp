#pragma once

// Access to the committed transformers fixtures (tests/fixtures/models, made by
// tools/reference/make_fixtures.py) and to the shipped source tree.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace troupe::testing {

inline std::filesystem::path source_dir() {
  const char* dir = std::getenv("TROUPE_SOURCE_DIR");
  return dir != nullptr ? std::filesystem::path(dir) : std::filesystem::current_path();
}

inline std::filesystem::path fixture_model(const std::string& name) {
  return source_dir() / "tests/fixtures/models" / name;
}

/// A raw little-endian float32 file.
inline std::vector<float> read_floats(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> values(bytes.size() / sizeof(float));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
  return values;
}

inline nlohmann::json read_json(const std::filesystem::path& file) {
  std::ifstream in(file);
  return nlohmann::json::parse(in);
}

/// A rows x cols matrix of seeded N(0, 1) values whose rows differ in magnitude: row r is scaled
/// by base^(r % 5 - 2), so per-row and per-tile scales must follow them.
inline std::vector<float> random_rows(std::int64_t rows, std::int64_t cols, std::uint32_t seed,
                                      float base) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> m(static_cast<std::size_t>(rows * cols));
  for (auto& v : m) v = normal(rng);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      m[static_cast<std::size_t>(r * cols + c)] *= std::pow(base, static_cast<float>(r % 5) - 2.0f);
  return m;
}

/// max |a - b| / max |b|: the relative error the parity bars use.
inline double max_relative_error(const float* a, const float* b, std::size_t count) {
  double worst = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < count; ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale > 0.0 ? worst / scale : worst;
}

/// DESIGN.md's accuracy metric for low-precision results: 1 - 2 sum(xy) / sum(x^2 + y^2), float64.
inline double diff_metric(const float* x, const float* y, std::size_t count) {
  double cross = 0.0, squares = 0.0;
  for (std::size_t i = 0; i < count; ++i) {
    const double a = x[i], b = y[i];
    cross += a * b;
    squares += a * a + b * b;
  }
  return squares > 0.0 ? 1.0 - 2.0 * cross / squares : 0.0;
}

}  // namespace troupe::testing
