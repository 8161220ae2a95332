// The CUDA conversion kernels against the host codecs (runtime/tensor/{e4m3,bf16}.hpp), which
// the exhaustive CPU tests pin to the format definitions. The GPU's cvt.rn.satfinite must agree
// bit for bit: every E4M3 code, every rounding boundary, saturation, NaN, and both the vector
// and the unaligned scalar paths. Skips with a message where there is no GPU.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "runtime/device/cuda.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/tensor/bf16.hpp"
#include "runtime/tensor/e4m3.hpp"

namespace {

using troupe::dtype;
using troupe::tensor;

class CudaConvert : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!troupe::cuda::built_with_cuda()) GTEST_SKIP() << "troupe was built without CUDA";
    if (troupe::cuda::device_count() == 0)
      GTEST_SKIP() << "no GPU: " << troupe::cuda::unavailable_reason();
  }
};

tensor host_f32(const std::vector<float>& values) {
  tensor t = tensor::empty(dtype::f32, {static_cast<std::int64_t>(values.size())});
  std::memcpy(t.data(), values.data(), values.size() * sizeof(float));
  return t;
}

/// Probes for E4M3 encoding: every code's value, the midpoints between neighbours and their
/// float neighbours, saturation and specials, and random floats across the whole range.
std::vector<float> e4m3_probes() {
  std::vector<float> probes;
  for (int code = 0; code < 0x7E; ++code) {
    const float low = troupe::e4m3_to_float(static_cast<std::uint8_t>(code));
    const float high = troupe::e4m3_to_float(static_cast<std::uint8_t>(code + 1));
    const float mid =
        static_cast<float>((static_cast<double>(low) + static_cast<double>(high)) / 2.0);
    for (float x : {low, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      probes.push_back(x);
      probes.push_back(-x);
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {448.0f, 449.0f, 463.9f, 464.0f, 480.0f, 1e6f, 3e38f, inf, -inf, 0.0f, -0.0f,
                  std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::min()})
    probes.push_back(x);
  std::mt19937 rng(42);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 1 << 20; ++i) {
    const float x = std::bit_cast<float>(bits(rng));
    if (!std::isnan(x)) probes.push_back(x);  // NaN is checked separately (payloads vary)
  }
  return probes;
}

TEST_F(CudaConvert, F32ToE4m3MatchesTheHostCodecBitForBit) {
  const auto probes = e4m3_probes();
  const tensor on_gpu = host_f32(probes).to(troupe::device::cuda(0));
  // Whole tensor (vector path) and the same data one element in (unaligned: scalar path).
  for (std::int64_t offset : {0, 1}) {
    const tensor input = on_gpu.narrow(0, offset, on_gpu.numel() - offset);
    const tensor codes = troupe::convert(input, dtype::f8_e4m3).to(troupe::device::cpu());
    std::int64_t mismatches = 0;
    for (std::int64_t i = 0; i < codes.numel(); ++i) {
      const float x = probes[static_cast<std::size_t>(i + offset)];
      if (codes.data_as<std::uint8_t>()[i] != troupe::float_to_e4m3(x) && mismatches++ < 10)
        ADD_FAILURE() << "x = " << x << " (bits " << std::hex << std::bit_cast<std::uint32_t>(x)
                      << "): GPU 0x" << int(codes.data_as<std::uint8_t>()[i]) << ", host 0x"
                      << int(troupe::float_to_e4m3(x));
    }
    EXPECT_EQ(mismatches, 0) << "offset " << offset << ", " << codes.numel() << " values";
  }
}

TEST_F(CudaConvert, NanEncodesToANanCode) {
  const tensor nan =
      host_f32({std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN()});
  const tensor codes =
      troupe::convert(nan.to(troupe::device::cuda(0)), dtype::f8_e4m3).to(troupe::device::cpu());
  for (int i = 0; i < 2; ++i) EXPECT_EQ(codes.data_as<std::uint8_t>()[i] & 0x7F, 0x7F);
  EXPECT_EQ(codes.data_as<std::uint8_t>()[0], troupe::e4m3_nan_code);
}

TEST_F(CudaConvert, E4m3ToF32DecodesEveryCode) {
  tensor codes = tensor::empty(dtype::f8_e4m3, {256 * 3 + 1});  // odd length: a tail too
  for (std::int64_t i = 0; i < codes.numel(); ++i)
    codes.data_as<std::uint8_t>()[i] = static_cast<std::uint8_t>(i % 256);
  const tensor decoded =
      troupe::convert(codes.to(troupe::device::cuda(0)), dtype::f32).to(troupe::device::cpu());
  for (std::int64_t i = 0; i < codes.numel(); ++i) {
    const float expected = troupe::e4m3_to_float(static_cast<std::uint8_t>(i % 256));
    const float got = decoded.data_as<float>()[i];
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << i % 256;
    } else {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(got), std::bit_cast<std::uint32_t>(expected))
          << "code " << i % 256;
    }
  }
}

TEST_F(CudaConvert, Bf16BothWaysMatchesTheHostCodec) {
  std::vector<float> probes;
  for (std::uint32_t code = 0; code < 65536; code += 3) {
    const std::uint32_t bits = code << 16;
    for (std::uint32_t delta : {0u, 0x7FFFu, 0x8000u, 0x8001u}) {
      const float x = std::bit_cast<float>(bits | delta);
      if (!std::isnan(x)) probes.push_back(x);
    }
  }
  const tensor codes = troupe::convert(host_f32(probes).to(troupe::device::cuda(0)), dtype::bf16);
  const tensor host_codes = codes.to(troupe::device::cpu());
  std::int64_t mismatches = 0;
  for (std::size_t i = 0; i < probes.size(); ++i)
    mismatches +=
        host_codes.data_as<std::uint16_t>()[i] != troupe::float_to_bf16(probes[i]) ? 1 : 0;
  EXPECT_EQ(mismatches, 0) << probes.size() << " values";
  const tensor back = troupe::convert(codes, dtype::f32).to(troupe::device::cpu());
  for (std::size_t i = 0; i < probes.size(); ++i) {
    const float expected = troupe::bf16_to_float(host_codes.data_as<std::uint16_t>()[i]);
    if (!std::isnan(expected)) {
      ASSERT_EQ(back.data_as<float>()[i], expected);
    }
  }
}

}  // namespace
