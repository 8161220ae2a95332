#pragma once

// IEEE binary16. Encoding rounds to nearest, ties to even; overflow becomes infinity; NaN stays a
// quiet NaN with its sign. Header-only so kernels and plugins can use it without linking libtroupe.

#include <bit>
#include <cstdint>

#include "runtime/tensor/e4m3.hpp"  // detail::shift_right_round_even

namespace troupe {

/// Encodes a float as binary16 bits.
constexpr std::uint16_t float_to_f16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u)
    return sign | 0x7E00u | static_cast<std::uint16_t>((magnitude >> 13) & 0x3FFu);
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65536: infinity
  const int exponent = static_cast<int>(magnitude >> 23) - 127;
  if (exponent < -14) {
    if ((magnitude >> 23) == 0) return sign;
    const std::uint32_t significand = (magnitude & 0x7FFFFFu) | 0x800000u;
    // Units of the smallest subnormal 2^-24: significand * 2^(exponent - 23 + 24).
    return sign |
           static_cast<std::uint16_t>(detail::shift_right_round_even(significand, -1 - exponent));
  }
  const std::uint32_t unrounded =
      (static_cast<std::uint32_t>(exponent + 15) << 23) | (magnitude & 0x7FFFFFu);
  return sign | static_cast<std::uint16_t>(detail::shift_right_round_even(unrounded, 13));
}

/// Decodes binary16 bits; exact.
constexpr float f16_to_float(std::uint16_t half) {
  const std::uint32_t sign = static_cast<std::uint32_t>(half & 0x8000u) << 16;
  const std::uint32_t exponent = (half >> 10) & 0x1Fu;
  const std::uint32_t mantissa = half & 0x3FFu;
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // m * 2^-24
    return std::bit_cast<float>(std::bit_cast<std::uint32_t>(magnitude) | sign);
  }
  return std::bit_cast<float>(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

}  // namespace troupe
