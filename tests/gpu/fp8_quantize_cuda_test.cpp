// The GPU's FP8 casts (kernels/cuda/fp8_quantize.hpp) against the host quantizer
// (kernels/cpu/fp8_quantize.hpp): every code and every scale bit-identical, for all four outputs,
// from f32 and bf16, on awkward inputs (zeros, subnormals, values at and beyond 448, NaN and inf,
// whole tiles of zeros, sizes that are not multiples of 128) and in the scale layouts cuBLASLt
// reads. Tolerance: none (bit equality).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/fp8_quantize.hpp"
#include "kernels/cuda/fp8_quantize.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/tensor/bf16.hpp"
#include "runtime/tensor/e4m3.hpp"
#include "runtime/tensor/tensor.hpp"
#include "tests/gpu/gpu_skip.hpp"
#include "tests/gpu/host_copies.hpp"

namespace {

using troupe::device;
using troupe::dtype;
using troupe::tensor;
namespace kc = troupe::kernels::cuda;
namespace kh = troupe::kernels::cpu;

/// Random normal values across many magnitudes, with the awkward ones sprinkled in.
std::vector<float> awkward(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> pick(0, 39);
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::denorm_min(),
                            -1e-40f,
                            1e-39f,
                            448.0f,
                            -448.0f,
                            449.0f,
                            464.0f,
                            1e30f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            1e-5f,
                            5e-5f};
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      float x = normal(rng) * std::pow(8.0f, static_cast<float>(r % 7) - 3.0f);
      const int p = pick(rng);
      if (p < static_cast<int>(std::size(specials))) x = specials[p];
      v[static_cast<std::size_t>(r * cols + c)] = x;
    }
  // Some tiles of nothing but zeros and subnormals: their scale comes from the 1e-4 floor.
  for (std::int64_t c = 0; c < std::min<std::int64_t>(cols, 128); ++c)
    v[static_cast<std::size_t>(c)] = c % 2 ? 0.0f : std::numeric_limits<float>::denorm_min();
  return v;
}

std::vector<float> transpose(const std::vector<float>& in, std::int64_t rows, std::int64_t cols) {
  std::vector<float> out(in.size());
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      out[static_cast<std::size_t>(c * rows + r)] = in[static_cast<std::size_t>(r * cols + c)];
  return out;
}

/// The host quantizer's codes and scales for tiles (per row) or blocks, scales [i][j] dense.
struct host_cast {
  std::vector<std::uint8_t> codes;
  std::vector<float> scales;
  std::int64_t scale_cols = 0;
};

host_cast host_tiles(const std::vector<float>& in, std::int64_t rows, std::int64_t cols) {
  host_cast h;
  h.scale_cols = (cols + 127) / 128;
  h.codes.resize(in.size());
  h.scales.resize(static_cast<std::size_t>(rows * h.scale_cols));
  kh::fp8_quantize_row_tiles(in.data(), rows, cols, h.codes.data(), h.scales.data());
  return h;
}

host_cast host_blocks(const std::vector<float>& in, std::int64_t rows, std::int64_t cols) {
  host_cast h;
  h.scale_cols = (cols + 127) / 128;
  h.codes.resize(in.size());
  h.scales.resize(static_cast<std::size_t>((rows + 127) / 128 * h.scale_cols));
  kh::fp8_quantize_blocks(in.data(), rows, cols, h.codes.data(), h.scales.data());
  return h;
}

using troupe::testing::download;
using troupe::testing::upload;

/// Scales written with strides (s0, s1) read back as [i][j] dense with `cols` columns.
std::vector<float> gather(const std::vector<float>& raw, std::int64_t rows, std::int64_t cols,
                          std::int64_t s0, std::int64_t s1) {
  std::vector<float> out(static_cast<std::size_t>(rows * cols));
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      out[static_cast<std::size_t>(i * cols + j)] = raw[static_cast<std::size_t>(i * s0 + j * s1)];
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Runs all four casts of in[rows, cols] on the GPU (scales in cuBLASLt-like column-major
/// layouts for tiles, row-major for blocks) and compares each with the host quantizer.
void expect_identical(const std::vector<float>& in, std::int64_t rows, std::int64_t cols,
                      bool from_bf16) {
  SCOPED_TRACE(testing::Message() << rows << " x " << cols << (from_bf16 ? " bf16" : " f32"));
  std::vector<float> values = in;
  tensor input;
  if (from_bf16) {
    std::vector<std::uint16_t> bits(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) {
      bits[i] = troupe::float_to_bf16(in[i]);
      values[i] = troupe::bf16_to_float(bits[i]);  // what the GPU sees, widened exactly
    }
    input = upload(bits, dtype::bf16);
  } else {
    input = upload(in, dtype::f32);
  }
  const std::int64_t tiles_c = (cols + 127) / 128, tiles_r = (rows + 127) / 128;
  tensor row_codes = tensor::empty(dtype::u8, {rows * cols}, device::cuda(0));
  tensor col_codes = tensor::empty(dtype::u8, {rows * cols}, device::cuda(0));
  tensor blk_codes = tensor::empty(dtype::u8, {rows * cols}, device::cuda(0));
  tensor blkt_codes = tensor::empty(dtype::u8, {rows * cols}, device::cuda(0));
  tensor row_scales = tensor::zeros(dtype::f32, {rows * tiles_c}, device::cuda(0));
  tensor col_scales = tensor::zeros(dtype::f32, {cols * tiles_r}, device::cuda(0));
  tensor blk_scales = tensor::zeros(dtype::f32, {tiles_r * tiles_c}, device::cuda(0));
  tensor blkt_scales = tensor::zeros(dtype::f32, {tiles_r * tiles_c}, device::cuda(0));
  kc::fp8_outputs out;
  out.row_tiles = {row_codes.data_as<std::uint8_t>(), row_scales.data_as<float>(), 1, rows};
  out.column_tiles_transposed = {col_codes.data_as<std::uint8_t>(), col_scales.data_as<float>(), 1,
                                 cols};
  out.blocks = {blk_codes.data_as<std::uint8_t>(), blk_scales.data_as<float>(), tiles_c, 1};
  out.blocks_transposed = {blkt_codes.data_as<std::uint8_t>(), blkt_scales.data_as<float>(),
                           tiles_r, 1};
  if (from_bf16)
    kc::fp8_quantize(input.data_as<std::uint16_t>(), cols, rows, cols, out, nullptr);
  else
    kc::fp8_quantize(input.data_as<float>(), cols, rows, cols, out, nullptr);
  troupe::cuda::synchronize(0);

  const auto rows_host = host_tiles(values, rows, cols);
  EXPECT_EQ(download<std::uint8_t>(row_codes), rows_host.codes) << "1x128 tile codes";
  EXPECT_TRUE(
      same_bits(gather(download<float>(row_scales), rows, tiles_c, 1, rows), rows_host.scales))
      << "1x128 tile scales";

  const auto transposed = transpose(values, rows, cols);
  const auto cols_host = host_tiles(transposed, cols, rows);
  EXPECT_EQ(download<std::uint8_t>(col_codes), cols_host.codes) << "128x1 tile codes, transposed";
  EXPECT_TRUE(
      same_bits(gather(download<float>(col_scales), cols, tiles_r, 1, cols), cols_host.scales))
      << "128x1 tile scales";

  const auto blocks_host = host_blocks(values, rows, cols);
  EXPECT_EQ(download<std::uint8_t>(blk_codes), blocks_host.codes) << "128x128 block codes";
  EXPECT_TRUE(same_bits(download<float>(blk_scales), blocks_host.scales)) << "block scales";

  const auto blockst_host = host_blocks(transposed, cols, rows);
  EXPECT_EQ(download<std::uint8_t>(blkt_codes), blockst_host.codes) << "block codes, transposed";
  EXPECT_TRUE(same_bits(download<float>(blkt_scales), blockst_host.scales))
      << "block scales, transposed";
}

TEST(CudaFp8Quantize, BitIdenticalToTheHostOnAwkwardInputAndShapes) {
  TROUPE_SKIP_WITHOUT_GPU();
  const std::pair<std::int64_t, std::int64_t> shapes[] = {
      {1, 1}, {1, 130}, {3, 7}, {128, 128}, {129, 257}, {200, 300}, {256, 7168}, {1000, 384}};
  std::uint32_t seed = 1;
  for (const auto& [rows, cols] : shapes)
    for (bool bf16 : {false, true}) expect_identical(awkward(rows, cols, seed++), rows, cols, bf16);
}

TEST(CudaFp8Quantize, EveryCodeAndRoundingBoundaryInOneTile) {
  TROUPE_SKIP_WITHOUT_GPU();
  // One row whose amax is 448 (factor 1): every E4M3 value and the midpoints between them.
  std::vector<float> row;
  for (int code = 0; code < 0x7E; ++code) {
    const float a = troupe::e4m3_to_float(static_cast<std::uint8_t>(code));
    const float b = troupe::e4m3_to_float(static_cast<std::uint8_t>(code + 1));
    row.push_back(a);
    row.push_back(-(a + b) / 2);
  }
  row.push_back(448.0f);
  const auto cols = static_cast<std::int64_t>(row.size());
  expect_identical(row, 1, cols, false);
}

}  // namespace
