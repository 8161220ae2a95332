#pragma once

// bfloat16: the upper half of an IEEE float32. Encoding rounds to nearest, ties to even; NaN
// stays NaN (quieted, sign kept); overflow becomes infinity as in IEEE arithmetic.
// Header-only so kernels and plugins can use it without linking libtroupe.

#include <bit>
#include <cstdint>

namespace troupe {

/// Encodes a float as bfloat16 bits.
constexpr std::uint16_t float_to_bf16(float value) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // keep NaN a (quiet) NaN
  const std::uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}

/// Decodes bfloat16 bits; exact.
constexpr float bf16_to_float(std::uint16_t bits) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

}  // namespace troupe
