#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/row_exchange.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads_per_block = 256;

// NOTES: one block per output row; the row's bytes move in the widest unit both pointers and the
// row length allow (16, 8, 4 or 1 bytes). A row is a few KB (7168 FP8 codes, 56 scales), so a
// block per row keeps every load of a warp within one row and needs no division per element.
template <class Unit>
__global__ void gather_rows_kernel(const Unit* in, std::int64_t row_units,
                                   const std::int64_t* source, Unit* out) {
  const std::int64_t r = blockIdx.x;
  const Unit* from = in + source[r] * row_units;
  Unit* to = out + r * row_units;
  for (std::int64_t i = threadIdx.x; i < row_units; i += blockDim.x) to[i] = from[i];
}

template <class Unit>
void launch_gather(const void* in, std::int64_t row_bytes, const std::int64_t* source,
                   std::int64_t rows, void* out, cudaStream_t stream) {
  gather_rows_kernel<Unit><<<static_cast<unsigned>(rows), threads_per_block, 0, stream>>>(
      static_cast<const Unit*>(in), row_bytes / static_cast<std::int64_t>(sizeof(Unit)), source,
      static_cast<Unit*>(out));
  TROUPE_CUDA_LAUNCHED();
}

__device__ inline float e4m3_value(std::uint8_t code) {
  const __half_raw half = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(half));
}

__global__ void decode_fp8_kernel(const std::uint8_t* codes, const float* scales,
                                  std::int64_t width, std::int64_t tiles,
                                  const std::int64_t* source, float* out) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t s = source != nullptr ? source[r] : r;
  const std::uint8_t* row = codes + s * width;
  const float* scale = scales + s * tiles;
  float* to = out + r * width;
  for (std::int64_t c = threadIdx.x; c < width; c += blockDim.x)
    to[c] = e4m3_value(row[c]) * scale[c / 128];
}

__global__ void decode_bf16_kernel(const std::uint16_t* values, std::int64_t width,
                                   const std::int64_t* source, float* out) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t s = source != nullptr ? source[r] : r;
  const std::uint16_t* row = values + s * width;
  float* to = out + r * width;
  for (std::int64_t c = threadIdx.x; c < width; c += blockDim.x)
    to[c] = __bfloat162float(__ushort_as_bfloat16(row[c]));
}

// NOTES: a grid has at most 2^31 - 1 blocks in x; rows beyond that go in several launches.
constexpr std::int64_t max_rows_per_launch = 0x7fffffff;

}  // namespace

void gather_rows(const void* in, std::int64_t row_bytes, const std::int64_t* source,
                 std::int64_t rows, void* out, void* stream) {
  require(row_bytes > 0 && rows >= 0, "gather_rows", "needs rows of at least one byte");
  const cudaStream_t s = as_stream(stream);
  for (std::int64_t first = 0; first < rows; first += max_rows_per_launch) {
    const std::int64_t n = std::min(rows - first, max_rows_per_launch);
    auto* to = static_cast<std::uint8_t*>(out) + first * row_bytes;
    const std::int64_t* from = source + first;
    auto fits = [&](std::uintptr_t unit) {
      return row_bytes % static_cast<std::int64_t>(unit) == 0 && aligned(in, unit) &&
             aligned(out, unit);
    };
    if (fits(16))
      launch_gather<uint4>(in, row_bytes, from, n, to, s);
    else if (fits(8))
      launch_gather<uint2>(in, row_bytes, from, n, to, s);
    else if (fits(4))
      launch_gather<std::uint32_t>(in, row_bytes, from, n, to, s);
    else
      launch_gather<std::uint8_t>(in, row_bytes, from, n, to, s);
  }
}

void decode_fp8_rows(const std::uint8_t* codes, const float* scales, std::int64_t width,
                     const std::int64_t* source, std::int64_t rows, float* out, void* stream) {
  require(width > 0 && rows >= 0, "decode_fp8_rows", "needs a positive width");
  const std::int64_t tiles = (width + 127) / 128;
  for (std::int64_t first = 0; first < rows; first += max_rows_per_launch) {
    const std::int64_t n = std::min(rows - first, max_rows_per_launch);
    decode_fp8_kernel<<<static_cast<unsigned>(n), threads_per_block, 0, as_stream(stream)>>>(
        source != nullptr ? codes : codes + first * width,
        source != nullptr ? scales : scales + first * tiles, width, tiles,
        source != nullptr ? source + first : nullptr, out + first * width);
    TROUPE_CUDA_LAUNCHED();
  }
}

void decode_bf16_rows(const std::uint16_t* values, std::int64_t width, const std::int64_t* source,
                      std::int64_t rows, float* out, void* stream) {
  require(width > 0 && rows >= 0, "decode_bf16_rows", "needs a positive width");
  for (std::int64_t first = 0; first < rows; first += max_rows_per_launch) {
    const std::int64_t n = std::min(rows - first, max_rows_per_launch);
    decode_bf16_kernel<<<static_cast<unsigned>(n), threads_per_block, 0, as_stream(stream)>>>(
        source != nullptr ? values : values + first * width, width,
        source != nullptr ? source + first : nullptr, out + first * width);
    TROUPE_CUDA_LAUNCHED();
  }
}

}  // namespace troupe::kernels::cuda
