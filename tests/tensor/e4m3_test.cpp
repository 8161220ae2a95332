// FP8 E4M3 conversions against an independent reference: the value of each code from the format's
// definition in double precision, and encoding by brute-force search for the nearest code.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/convert.hpp"
#include "runtime/tensor/e4m3.hpp"

namespace {

/// The value a code stands for, straight from the E4M3FN definition (bias 7, no infinities).
double reference_value(int code) {
  const int sign = code >> 7, exponent = (code >> 3) & 0xF, mantissa = code & 0x7;
  if (exponent == 0xF && mantissa == 0x7) return std::numeric_limits<double>::quiet_NaN();
  const double magnitude =
      exponent == 0 ? std::ldexp(mantissa, -9) : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return sign ? -magnitude : magnitude;
}

/// Nearest finite code to x, ties to the code with an even mantissa; |x| beyond 448 saturates.
std::uint8_t reference_encode(float x) {
  if (std::isnan(x)) return troupe::e4m3_nan_code;
  const double target = std::fabs(static_cast<double>(x));
  int best = 0;
  double best_distance = std::numeric_limits<double>::infinity();
  for (int code = 0; code < 0x7F; ++code) {  // the non-negative finite codes, in increasing order
    const double distance = std::fabs(reference_value(code) - target);
    if (distance < best_distance || (distance == best_distance && (code & 1) == 0 && (best & 1))) {
      best_distance = distance;
      best = code;
    }
  }
  return static_cast<std::uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

TEST(E4m3, DecodesEveryCodeExactly) {
  for (int code = 0; code < 256; ++code) {
    const float decoded = troupe::e4m3_to_float(static_cast<std::uint8_t>(code));
    const double expected = reference_value(code);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(decoded)) << "code " << code;
    } else {
      EXPECT_EQ(static_cast<double>(decoded), expected) << "code " << code;
      EXPECT_EQ(std::signbit(decoded), (code & 0x80) != 0) << "code " << code;
    }
  }
  EXPECT_EQ(troupe::e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(troupe::e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(troupe::e4m3_to_float(0x08), std::ldexp(1.0f, -6));  // smallest normal
}

TEST(E4m3, EncodingEveryFiniteValueGivesItsCodeBack) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;
    const float value = troupe::e4m3_to_float(static_cast<std::uint8_t>(code));
    EXPECT_EQ(troupe::float_to_e4m3(value), code) << "value " << value;
  }
}

TEST(E4m3, MidpointsRoundToEvenAndNeighboursRoundToNearest) {
  for (int code = 0; code < 0x7E; ++code) {
    const float low = troupe::e4m3_to_float(static_cast<std::uint8_t>(code));
    const float high = troupe::e4m3_to_float(static_cast<std::uint8_t>(code + 1));
    const float midpoint =
        static_cast<float>((static_cast<double>(low) + static_cast<double>(high)) / 2.0);
    const int even = (code & 1) == 0 ? code : code + 1;
    for (int sign : {0, 0x80}) {
      const float s = sign ? -1.0f : 1.0f;
      EXPECT_EQ(troupe::float_to_e4m3(s * midpoint), even | sign) << "midpoint " << s * midpoint;
      EXPECT_EQ(troupe::float_to_e4m3(s * std::nextafter(midpoint, 0.0f)), code | sign);
      EXPECT_EQ(troupe::float_to_e4m3(s * std::nextafter(midpoint, 1e9f)), (code + 1) | sign);
    }
  }
}

TEST(E4m3, SaturatesAtPlusMinus448) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {448.0f, 449.0f, 463.99f, 464.0f, 480.0f, 500.0f, 1e6f, 3.0e38f, inf}) {
    EXPECT_EQ(troupe::float_to_e4m3(x), 0x7E) << x;
    EXPECT_EQ(troupe::float_to_e4m3(-x), 0xFE) << -x;
  }
}

TEST(E4m3, NanEncodesToTheNanCodeAndBothNanCodesDecodeToNan) {
  EXPECT_EQ(troupe::float_to_e4m3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(troupe::float_to_e4m3(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(troupe::float_to_e4m3(std::numeric_limits<float>::signaling_NaN()), 0x7F);
  EXPECT_TRUE(std::isnan(troupe::e4m3_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(troupe::e4m3_to_float(0xFF)));
}

TEST(E4m3, TinyValuesAndSignedZero) {
  EXPECT_EQ(troupe::float_to_e4m3(0.0f), 0x00);
  EXPECT_EQ(troupe::float_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(troupe::float_to_e4m3(std::ldexp(1.0f, -10)), 0x00);  // half the smallest step: even
  EXPECT_EQ(troupe::float_to_e4m3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(troupe::float_to_e4m3(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(troupe::float_to_e4m3(-std::numeric_limits<float>::min()), 0x80);
}

TEST(E4m3, RandomFloatsMatchBruteForceNearest) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> exponent(-14.0f, 10.0f);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (int i = 0; i < 20000; ++i) {
    const float x = unit(rng) * std::exp2(exponent(rng));
    ASSERT_EQ(troupe::float_to_e4m3(x), reference_encode(x)) << "x = " << x;
  }
}

TEST(E4m3, BulkKernelsMatchTheScalarCodec) {
  std::vector<float> input;
  for (int code = 0; code < 256; ++code)
    input.push_back(troupe::e4m3_to_float(static_cast<std::uint8_t>(code)));
  for (float x = -600.0f; x <= 600.0f; x += 0.37f) input.push_back(x);
  // A sweep across every sign, exponent and mantissa region, NaNs and infinities included: the
  // branch-free bulk kernel must agree with the scalar specification on all of them.
  for (std::uint64_t bits = 0; bits < (std::uint64_t{1} << 32); bits += 4099)
    input.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(bits)));
  for (int code = 0; code < 0x7E; ++code) {  // every midpoint and its neighbours
    const float low = troupe::e4m3_to_float(static_cast<std::uint8_t>(code));
    const float high = troupe::e4m3_to_float(static_cast<std::uint8_t>(code + 1));
    const float mid =
        static_cast<float>((static_cast<double>(low) + static_cast<double>(high)) / 2.0);
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      input.push_back(x);
      input.push_back(-x);
    }
  }
  std::vector<std::uint8_t> codes(input.size());
  troupe::kernels::cpu::f32_to_e4m3(input.data(), codes.data(),
                                    static_cast<std::int64_t>(input.size()));
  std::vector<float> decoded(input.size());
  troupe::kernels::cpu::e4m3_to_f32(codes.data(), decoded.data(),
                                    static_cast<std::int64_t>(codes.size()));
  for (std::size_t i = 0; i < input.size(); ++i) {
    ASSERT_EQ(codes[i], troupe::float_to_e4m3(input[i])) << input[i];
    const float expected = troupe::e4m3_to_float(codes[i]);
    if (std::isnan(expected))
      ASSERT_TRUE(std::isnan(decoded[i]));
    else
      ASSERT_EQ(decoded[i], expected);
  }
}

}  // namespace
