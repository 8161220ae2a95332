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

// NOTES: eight elements a thread where the row allows (a width of a multiple of 8, aligned
// rows): one 8-byte load of codes (or a 16-byte load of BF16), one scale (8 divides the 1x128
// tile), two 16-byte stores. The decodes write 4 bytes for every byte or two they read, so the
// stores' width is what sets their speed; the scalar loops are for odd widths.
template <bool vector>
__global__ void decode_fp8_kernel(const std::uint8_t* codes, const float* scales,
                                  std::int64_t width, std::int64_t tiles,
                                  const std::int64_t* source, float* out) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t s = source != nullptr ? source[r] : r;
  const std::uint8_t* row = codes + s * width;
  const float* scale = scales + s * tiles;
  float* to = out + r * width;
  if constexpr (vector) {
    for (std::int64_t c = threadIdx.x * 8; c < width; c += blockDim.x * 8) {
      const uint2 eight = *reinterpret_cast<const uint2*>(row + c);
      const float f = scale[c / 128];
      float4 low, high;
      low.x = e4m3_value(eight.x & 0xFFu) * f;
      low.y = e4m3_value((eight.x >> 8) & 0xFFu) * f;
      low.z = e4m3_value((eight.x >> 16) & 0xFFu) * f;
      low.w = e4m3_value(eight.x >> 24) * f;
      high.x = e4m3_value(eight.y & 0xFFu) * f;
      high.y = e4m3_value((eight.y >> 8) & 0xFFu) * f;
      high.z = e4m3_value((eight.y >> 16) & 0xFFu) * f;
      high.w = e4m3_value(eight.y >> 24) * f;
      *reinterpret_cast<float4*>(to + c) = low;
      *reinterpret_cast<float4*>(to + c + 4) = high;
    }
  } else {
    for (std::int64_t c = threadIdx.x; c < width; c += blockDim.x)
      to[c] = e4m3_value(row[c]) * scale[c / 128];
  }
}

__device__ inline float bf16_value(std::uint32_t bits) {
  return __uint_as_float(bits << 16);
}

template <bool vector>
__global__ void decode_bf16_kernel(const std::uint16_t* values, std::int64_t width,
                                   const std::int64_t* source, float* out) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t s = source != nullptr ? source[r] : r;
  const std::uint16_t* row = values + s * width;
  float* to = out + r * width;
  if constexpr (vector) {
    for (std::int64_t c = threadIdx.x * 8; c < width; c += blockDim.x * 8) {
      const uint4 eight = *reinterpret_cast<const uint4*>(row + c);
      *reinterpret_cast<float4*>(to + c) =
          make_float4(bf16_value(eight.x & 0xFFFFu), bf16_value(eight.x >> 16),
                      bf16_value(eight.y & 0xFFFFu), bf16_value(eight.y >> 16));
      *reinterpret_cast<float4*>(to + c + 4) =
          make_float4(bf16_value(eight.z & 0xFFFFu), bf16_value(eight.z >> 16),
                      bf16_value(eight.w & 0xFFFFu), bf16_value(eight.w >> 16));
    }
  } else {
    for (std::int64_t c = threadIdx.x; c < width; c += blockDim.x) to[c] = bf16_value(row[c]);
  }
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
  const bool vector = width % 8 == 0 && aligned(codes, 8) && aligned(out, 16);
  for (std::int64_t first = 0; first < rows; first += max_rows_per_launch) {
    const std::int64_t n = std::min(rows - first, max_rows_per_launch);
    const std::uint8_t* c = source != nullptr ? codes : codes + first * width;
    const float* s = source != nullptr ? scales : scales + first * tiles;
    const std::int64_t* from = source != nullptr ? source + first : nullptr;
    auto kernel = vector ? decode_fp8_kernel<true> : decode_fp8_kernel<false>;
    kernel<<<static_cast<unsigned>(n), threads_per_block, 0, as_stream(stream)>>>(
        c, s, width, tiles, from, out + first * width);
    TROUPE_CUDA_LAUNCHED();
  }
}

void decode_bf16_rows(const std::uint16_t* values, std::int64_t width, const std::int64_t* source,
                      std::int64_t rows, float* out, void* stream) {
  require(width > 0 && rows >= 0, "decode_bf16_rows", "needs a positive width");
  const bool vector = width % 8 == 0 && aligned(values, 16) && aligned(out, 16);
  for (std::int64_t first = 0; first < rows; first += max_rows_per_launch) {
    const std::int64_t n = std::min(rows - first, max_rows_per_launch);
    const std::uint16_t* v = source != nullptr ? values : values + first * width;
    const std::int64_t* from = source != nullptr ? source + first : nullptr;
    auto kernel = vector ? decode_bf16_kernel<true> : decode_bf16_kernel<false>;
    kernel<<<static_cast<unsigned>(n), threads_per_block, 0, as_stream(stream)>>>(
        v, width, from, out + first * width);
    TROUPE_CUDA_LAUNCHED();
  }
}

}  // namespace troupe::kernels::cuda
