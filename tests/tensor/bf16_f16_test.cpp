// bfloat16 and binary16 conversions. bf16 against a double-precision nearest-even reference at
// every rounding boundary; f16 against GCC's _Float16 (libgcc's soft-float, an independent
// implementation) for every code and every boundary.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/convert.hpp"
#include "runtime/tensor/bf16.hpp"
#include "runtime/tensor/f16.hpp"

namespace {

TEST(Bf16, DecodesEveryCodeAsTheUpperHalfOfAFloat) {
  for (std::uint32_t code = 0; code < 65536; ++code) {
    const float value = troupe::bf16_to_float(static_cast<std::uint16_t>(code));
    EXPECT_EQ(std::bit_cast<std::uint32_t>(value), code << 16);
  }
}

TEST(Bf16, RoundsToNearestEvenAtEveryBoundary) {
  for (std::uint32_t code = 0; code < 65536; ++code) {
    const std::uint32_t bits = code << 16;
    const float value = std::bit_cast<float>(bits);
    if (std::isnan(value) || std::isinf(value)) continue;
    // Every finite code round-trips.
    ASSERT_EQ(troupe::float_to_bf16(value), code);
    if ((code & 0x7FFF) == 0x7F7F) continue;  // the next code up is infinity
    const std::uint32_t midpoint_bits = bits | 0x8000u;
    const std::uint16_t next = static_cast<std::uint16_t>(code + 1);
    const std::uint16_t even = (code & 1) == 0 ? static_cast<std::uint16_t>(code) : next;
    ASSERT_EQ(troupe::float_to_bf16(std::bit_cast<float>(midpoint_bits)), even);
    ASSERT_EQ(troupe::float_to_bf16(std::bit_cast<float>(midpoint_bits - 1)), code);
    ASSERT_EQ(troupe::float_to_bf16(std::bit_cast<float>(midpoint_bits + 1)), next);
  }
}

TEST(Bf16, OverflowBecomesInfinityAndNanStaysNan) {
  EXPECT_EQ(troupe::float_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(troupe::float_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  const std::uint16_t nan = troupe::float_to_bf16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(troupe::bf16_to_float(nan)));
  // A signalling NaN whose payload sits only in the low 16 bits must not become infinity.
  const float low_payload_nan = std::bit_cast<float>(0x7F800001u);
  EXPECT_TRUE(std::isnan(troupe::bf16_to_float(troupe::float_to_bf16(low_payload_nan))));
  EXPECT_TRUE(std::signbit(troupe::bf16_to_float(troupe::float_to_bf16(-low_payload_nan))));
}

TEST(F16, DecodesEveryCodeLikeFloat16) {
  for (std::uint32_t code = 0; code < 65536; ++code) {
    const _Float16 reference = std::bit_cast<_Float16>(static_cast<std::uint16_t>(code));
    const float expected = static_cast<float>(reference);
    const float value = troupe::f16_to_float(static_cast<std::uint16_t>(code));
    if (std::isnan(expected))
      ASSERT_TRUE(std::isnan(value)) << code;
    else
      ASSERT_EQ(std::bit_cast<std::uint32_t>(value), std::bit_cast<std::uint32_t>(expected))
          << code;
  }
}

std::uint16_t reference_f16(float x) {
  return std::bit_cast<std::uint16_t>(static_cast<_Float16>(x));
}

TEST(F16, EncodesLikeFloat16AtEveryBoundary) {
  std::vector<float> probes;
  for (std::uint32_t code = 0; code < 0x7C00; ++code) {
    const float low = troupe::f16_to_float(static_cast<std::uint16_t>(code));
    const float high = troupe::f16_to_float(static_cast<std::uint16_t>(code + 1));
    const float midpoint =
        static_cast<float>((static_cast<double>(low) + static_cast<double>(high)) / 2.0);
    for (float x : {low, midpoint, std::nextafter(midpoint, 0.0f),
                    std::nextafter(midpoint, std::numeric_limits<float>::infinity())}) {
      probes.push_back(x);
      probes.push_back(-x);
    }
  }
  probes.push_back(std::numeric_limits<float>::infinity());
  probes.push_back(std::numeric_limits<float>::max());
  probes.push_back(std::numeric_limits<float>::denorm_min());
  for (float x : probes) ASSERT_EQ(troupe::float_to_f16(x), reference_f16(x)) << "x = " << x;
  EXPECT_TRUE(std::isnan(
      troupe::f16_to_float(troupe::float_to_f16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(Bf16F16, BulkKernelsMatchTheScalarCodecs) {
  std::vector<float> input;
  for (float x = -70000.0f; x <= 70000.0f; x += 13.7f) input.push_back(x);
  for (float x = -1.0f; x <= 1.0f; x += 0.00123f) input.push_back(x);
  for (std::uint64_t bits = 0; bits < (std::uint64_t{1} << 32); bits += 4099)  // NaNs included
    input.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(bits)));
  const auto n = static_cast<std::int64_t>(input.size());
  std::vector<std::uint16_t> bits(input.size());
  std::vector<float> back(input.size());
  troupe::kernels::cpu::f32_to_bf16(input.data(), bits.data(), n);
  troupe::kernels::cpu::bf16_to_f32(bits.data(), back.data(), n);
  for (std::size_t i = 0; i < input.size(); ++i) {
    ASSERT_EQ(bits[i], troupe::float_to_bf16(input[i])) << std::bit_cast<std::uint32_t>(input[i]);
    ASSERT_EQ(std::bit_cast<std::uint32_t>(back[i]),
              std::bit_cast<std::uint32_t>(troupe::bf16_to_float(bits[i])));
  }
  troupe::kernels::cpu::f32_to_f16(input.data(), bits.data(), n);
  troupe::kernels::cpu::f16_to_f32(bits.data(), back.data(), n);
  for (std::size_t i = 0; i < input.size(); ++i) {
    if (std::isnan(input[i])) continue;  // NaN payloads are implementation-defined in _Float16
    ASSERT_EQ(bits[i], reference_f16(input[i])) << input[i];
    ASSERT_EQ(std::bit_cast<std::uint32_t>(back[i]),
              std::bit_cast<std::uint32_t>(troupe::f16_to_float(bits[i])));
  }
}

}  // namespace
