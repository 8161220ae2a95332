#pragma once

// FP8 E4M3 ("e4m3fn": no infinities, one NaN pattern per sign) as DeepSeek-V3 uses it:
// 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; largest finite value 448.
// Encoding rounds to nearest, ties to even, and saturates: finite values and infinities beyond
// the range become +-448. NaN encodes as 0x7F. This is what the GPU's cvt.rn.satfinite.e4m3x2.f32
// does, so CPU and CUDA paths agree bit for bit.
// Header-only so kernels and plugins can use it without linking libtroupe.

#include <bit>
#include <cstdint>
#include <limits>

namespace troupe {

/// Largest finite E4M3 value.
inline constexpr float e4m3_max = 448.0f;
/// The NaN code produced when encoding NaN.
inline constexpr std::uint8_t e4m3_nan_code = 0x7F;

namespace detail {

/// Shifts `value` right by `shift` bits, rounding to nearest, ties to even.
constexpr std::uint32_t shift_right_round_even(std::uint32_t value, int shift) {
  if (shift <= 0) return value;
  if (shift >= 32) return 0;  // below half of the smallest step: every caller passes a value < 2^24
  std::uint32_t quotient = value >> shift;
  std::uint32_t remainder = value & ((std::uint32_t{1} << shift) - 1);
  std::uint32_t half = std::uint32_t{1} << (shift - 1);
  if (remainder > half || (remainder == half && (quotient & 1u))) ++quotient;
  return quotient;
}

}  // namespace detail

/// Encodes a float as E4M3 (round to nearest even, saturating, NaN -> 0x7F).
constexpr std::uint8_t float_to_e4m3(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint8_t sign = static_cast<std::uint8_t>((bits >> 24) & 0x80u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return e4m3_nan_code;
  if (magnitude >= 0x43E00000u) return sign | 0x7Eu;  // >= 448 (and +-inf): saturate
  const int exponent = static_cast<int>(magnitude >> 23) - 127;
  if (exponent < -6) {
    // Subnormal E4M3 (or zero): the value in units of the smallest step 2^-9, rounded.
    // A result of 8 is the smallest normal number, whose code is exactly 8.
    if ((magnitude >> 23) == 0) return sign;  // float32 zeros and subnormals are far below 2^-10
    const std::uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
    return sign |
           static_cast<std::uint8_t>(detail::shift_right_round_even(significand, 14 - exponent));
  }
  // Normal: keep 3 mantissa bits; a rounding carry moves into the exponent field correctly.
  const std::uint32_t unrounded =
      (static_cast<std::uint32_t>(exponent + 7) << 23) | (magnitude & 0x7FFFFFu);
  const std::uint32_t code = detail::shift_right_round_even(unrounded, 20);
  return sign | static_cast<std::uint8_t>(code > 0x7Eu ? 0x7Eu : code);
}

/// Decodes an E4M3 code. 0x7F and 0xFF are NaN; there are no infinities.
constexpr float e4m3_to_float(std::uint8_t code) {
  const std::uint32_t sign = static_cast<std::uint32_t>(code & 0x80u) << 24;
  const std::uint32_t exponent = (code >> 3) & 0xFu;
  const std::uint32_t mantissa = code & 0x7u;
  if (exponent == 0xF && mantissa == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0) {
    // m * 2^-9: exact in float32, built from the integer to stay constexpr.
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 512.0f);
    return std::bit_cast<float>(std::bit_cast<std::uint32_t>(magnitude) | sign);
  }
  return std::bit_cast<float>(sign | ((exponent - 7 + 127) << 23) | (mantissa << 20));
}

}  // namespace troupe
