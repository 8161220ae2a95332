// The row moves of expert parallelism's all-to-all (kernels/cuda/row_exchange.hpp) against the
// host: rows reordered by a random permutation for row sizes that take each copy width (1, 4, 8
// and 16 bytes, and offsets that break the alignment), and FP8 and BF16 rows decoded with the
// reordering fused in, against the host's quantizer and decoder. Tolerance: none (bit equality).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cpu/fp8_quantize.hpp"
#include "kernels/cuda/row_exchange.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/tensor/bf16.hpp"
#include "runtime/tensor/tensor.hpp"
#include "tests/gpu/gpu_skip.hpp"
#include "tests/gpu/host_copies.hpp"

namespace {

using troupe::device;
using troupe::dtype;
using troupe::tensor;
namespace kc = troupe::kernels::cuda;
namespace kh = troupe::kernels::cpu;

using troupe::testing::download;
using troupe::testing::upload;

std::vector<std::int64_t> shuffled(std::int64_t n, std::uint32_t seed) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

TEST(CudaRowExchange, GatherRowsMovesEveryByteForEveryCopyWidth) {
  TROUPE_SKIP_WITHOUT_GPU();
  void* stream = troupe::cuda::current_stream(0);
  const std::int64_t rows = 301;
  for (const std::int64_t row_bytes : {1, 7, 12, 24, 48, 224, 7168}) {
    // Offsets of the input and the output: 4 and 8 bytes break 16-byte alignment on one side or
    // both, or keep the two sides alike.
    for (const auto& [in_offset, out_offset] :
         {std::pair<std::int64_t, std::int64_t>{0, 0}, {4, 0}, {0, 8}, {4, 4}, {4, 8}}) {
      SCOPED_TRACE(testing::Message()
                   << row_bytes << " bytes a row, offsets " << in_offset << " and " << out_offset);
      std::vector<std::uint8_t> in(static_cast<std::size_t>(rows * row_bytes + in_offset));
      std::mt19937 rng(static_cast<std::uint32_t>(row_bytes));
      for (auto& b : in) b = static_cast<std::uint8_t>(rng());
      const auto order = shuffled(rows, 11);
      const tensor from = upload(in, dtype::u8);
      const tensor index = upload(order, dtype::i64);
      tensor to = tensor::zeros(dtype::u8, {rows * row_bytes + out_offset}, device::cuda(0));
      kc::gather_rows(from.data_as<std::uint8_t>() + in_offset, row_bytes,
                      index.data_as<const std::int64_t>(), rows,
                      to.data_as<std::uint8_t>() + out_offset, stream);
      const auto got = download<std::uint8_t>(to);
      for (std::int64_t r = 0; r < rows; ++r)
        ASSERT_EQ(
            0, std::memcmp(got.data() + out_offset + r * row_bytes,
                           in.data() + in_offset + order[static_cast<std::size_t>(r)] * row_bytes,
                           static_cast<std::size_t>(row_bytes)))
            << "row " << r;
    }
  }
}

TEST(CudaRowExchange, DecodingWithTheReorderingGivesTheHostsValues) {
  TROUPE_SKIP_WITHOUT_GPU();
  void* stream = troupe::cuda::current_stream(0);
  const std::int64_t rows = 97;
  for (const std::int64_t width : {1, 128, 300, 7168}) {
    SCOPED_TRACE(testing::Message() << rows << " x " << width);
    const std::int64_t tiles = (width + 127) / 128;
    std::vector<float> x(static_cast<std::size_t>(rows * width));
    std::mt19937 rng(static_cast<std::uint32_t>(width));
    std::normal_distribution<float> normal;
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * static_cast<float>(1 + i % 9);
    std::vector<std::uint8_t> codes(x.size());
    std::vector<float> scales(static_cast<std::size_t>(rows * tiles));
    kh::fp8_quantize_row_tiles(x.data(), rows, width, codes.data(), scales.data());
    std::vector<float> decoded(x.size());
    kh::fp8_dequantize_row_tiles(codes.data(), scales.data(), rows, width, decoded.data());
    std::vector<std::uint16_t> halves(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) halves[i] = troupe::float_to_bf16(x[i]);

    for (const bool reorder : {false, true}) {
      const auto order = shuffled(rows, 5);
      const tensor index = upload(order, dtype::i64);
      const auto* source = reorder ? index.data_as<const std::int64_t>() : nullptr;
      auto row_of = [&](std::int64_t r) {
        return reorder ? order[static_cast<std::size_t>(r)] : r;
      };
      tensor out = tensor::empty(dtype::f32, {rows, width}, device::cuda(0));
      kc::decode_fp8_rows(upload(codes, dtype::u8).data_as<const std::uint8_t>(),
                          upload(scales, dtype::f32).data_as<const float>(), width, source, rows,
                          out.data_as<float>(), stream);
      auto got = download<float>(out);
      for (std::int64_t r = 0; r < rows; ++r)
        ASSERT_EQ(0, std::memcmp(got.data() + r * width, decoded.data() + row_of(r) * width,
                                 static_cast<std::size_t>(width) * sizeof(float)))
            << "fp8 row " << r << (reorder ? " reordered" : "");
      kc::decode_bf16_rows(upload(halves, dtype::bf16).data_as<const std::uint16_t>(), width,
                           source, rows, out.data_as<float>(), stream);
      got = download<float>(out);
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < width; ++c)
          ASSERT_EQ(got[static_cast<std::size_t>(r * width + c)],
                    troupe::bf16_to_float(halves[static_cast<std::size_t>(row_of(r) * width + c)]))
              << "bf16 row " << r << " column " << c;
    }
  }
}

}  // namespace
