#include "kernels/cpu/rope.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace troupe::kernels::cpu {

std::vector<float> rope_inverse_frequencies(std::int64_t dim, double theta,
                                            const yarn_parameters* yarn) {
  const auto half = static_cast<std::size_t>(dim / 2);
  // NOTES: float32 throughout, in the order transformers computes it
  // (pos_freqs = base ** (arange(0, dim, 2) / dim)), so the angles match the reference bit for
  // bit at small positions and within float rounding at large ones.
  std::vector<float> base_powers(half), inv(half);
  for (std::size_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    base_powers[i] = std::pow(static_cast<float>(theta), exponent);
    inv[i] = 1.0f / base_powers[i];
  }
  if (yarn == nullptr || yarn->factor <= 1.0) return inv;
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) *
            std::log(static_cast<double>(yarn->original_max_position_embeddings) /
                     (rotations * 2 * std::numbers::pi))) /
           (2 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(yarn->beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(yarn->beta_slow)), static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  const auto factor = static_cast<float>(yarn->factor);
  for (std::size_t i = 0; i < half; ++i) {
    const float ramp = std::clamp(
        (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low), 0.0f,
        1.0f);
    const float extrapolation =
        1.0f - ramp;  // 1 keeps the original frequency, 0 divides it by factor
    const float interpolated = 1.0f / (factor * base_powers[i]);
    inv[i] = interpolated * (1.0f - extrapolation) + inv[i] * extrapolation;
  }
  return inv;
}

void rope_tables(const std::vector<float>& inverse_frequencies, std::int64_t positions,
                 float* cos_table, float* sin_table) {
  const auto half = static_cast<std::int64_t>(inverse_frequencies.size());
  for (std::int64_t p = 0; p < positions; ++p) {
    for (std::int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inverse_frequencies[static_cast<std::size_t>(i)];
      cos_table[p * half + i] = std::cos(angle);
      sin_table[p * half + i] = std::sin(angle);
    }
  }
}

namespace {

/// Rotates the interleaved pairs of one row by the angles of one table row.
void rotate_row(float* v, std::int64_t half, const float* c, const float* s, float sign) {
  for (std::int64_t i = 0; i < half; ++i) {
    const float a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * c[i] - sign * b * s[i];
    v[2 * i + 1] = b * c[i] + sign * a * s[i];
  }
}

}  // namespace

void rope_rotate(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                 std::int64_t heads, std::int64_t length, const float* cos_table,
                 const float* sin_table, int direction) {
  const std::int64_t half = dim / 2;
  const float sign = direction >= 0 ? 1.0f : -1.0f;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t position = (r / heads) % length;
    rotate_row(x + r * stride, half, cos_table + position * half, sin_table + position * half,
               sign);
  }
}

void rope_rotate_at(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                    std::int64_t heads, const std::int64_t* positions, const float* cos_table,
                    const float* sin_table, int direction) {
  const std::int64_t half = dim / 2;
  const float sign = direction >= 0 ? 1.0f : -1.0f;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t position = positions[r / heads];
    rotate_row(x + r * stride, half, cos_table + position * half, sin_table + position * half,
               sign);
  }
}

}  // namespace troupe::kernels::cpu
