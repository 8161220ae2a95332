#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/convert.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads_per_block = 256;

// Each conversion is a struct with the scalar step and the step for 4 consecutive elements
// (16-byte loads of f32, 4- or 8-byte stores). One kernel template runs them all.

struct f32_to_e4m3_op {
  using input = float;
  using output = std::uint8_t;
  using input4 = float4;
  using output4 = std::uint32_t;
  __device__ static output one(input x) {
    return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
  }
  __device__ static output4 four(input4 v) {
    const std::uint32_t low =
        __nv_cvt_float2_to_fp8x2(make_float2(v.x, v.y), __NV_SATFINITE, __NV_E4M3);
    const std::uint32_t high =
        __nv_cvt_float2_to_fp8x2(make_float2(v.z, v.w), __NV_SATFINITE, __NV_E4M3);
    return low | (high << 16);
  }
};

struct e4m3_to_f32_op {
  using input = std::uint8_t;
  using output = float;
  using input4 = std::uint32_t;
  using output4 = float4;
  __device__ static output one(std::uint32_t code) {
    const __half_raw half =
        __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
    return __half2float(__half(half));
  }
  __device__ static output4 four(input4 codes) {
    return make_float4(one(codes & 0xFFu), one((codes >> 8) & 0xFFu), one((codes >> 16) & 0xFFu),
                       one(codes >> 24));
  }
};

struct f32_to_bf16_op {
  using input = float;
  using output = std::uint16_t;
  using input4 = float4;
  using output4 = uint2;
  __device__ static output one(input x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
  __device__ static output4 four(input4 v) {
    return make_uint2(one(v.x) | (static_cast<std::uint32_t>(one(v.y)) << 16),
                      one(v.z) | (static_cast<std::uint32_t>(one(v.w)) << 16));
  }
};

struct bf16_to_f32_op {
  using input = std::uint16_t;
  using output = float;
  using input4 = uint2;
  using output4 = float4;
  __device__ static output one(input x) {
    return __uint_as_float(static_cast<std::uint32_t>(x) << 16);
  }
  __device__ static output4 four(input4 v) {
    return make_float4(__uint_as_float(v.x << 16), __uint_as_float(v.x & 0xFFFF0000u),
                       __uint_as_float(v.y << 16), __uint_as_float(v.y & 0xFFFF0000u));
  }
};

// NOTES: with `vectorized`, threads take groups of 4 elements (one wide load, one wide store);
// the last count % 4 elements, or all of them when the pointers are not aligned for wide access,
// go one by one. Grid-stride loops keep the grid small for huge tensors.
template <class Op>
__global__ void convert_kernel(const typename Op::input* __restrict__ input,
                               typename Op::output* __restrict__ output, std::int64_t count,
                               bool vectorized) {
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t groups = vectorized ? count / 4 : 0;
  for (std::int64_t g = first; g < groups; g += stride)
    reinterpret_cast<typename Op::output4*>(output)[g] =
        Op::four(reinterpret_cast<const typename Op::input4*>(input)[g]);
  for (std::int64_t i = groups * 4 + first; i < count; i += stride) output[i] = Op::one(input[i]);
}

/// Enough blocks to cover the work once, capped: grid-stride loops do the rest.
template <class Op>
void launch(const typename Op::input* input, typename Op::output* output, std::int64_t count,
            void* stream) {
  if (count == 0) return;
  const bool vectorized =
      aligned(input, sizeof(typename Op::input4)) && aligned(output, sizeof(typename Op::output4));
  const std::int64_t items = vectorized ? count / 4 + count % 4 : count;
  const std::int64_t blocks =
      std::clamp<std::int64_t>((items + threads_per_block - 1) / threads_per_block, 1, 16384);
  convert_kernel<Op>
      <<<static_cast<unsigned>(blocks), threads_per_block, 0, static_cast<cudaStream_t>(stream)>>>(
          input, output, count, vectorized);
  TROUPE_CUDA_CHECK(cudaGetLastError());
}

// One row of `cols` f32 values per grid row, four at a time where the row allows it.
__global__ void f32_to_bf16_rows_kernel(const float* input, std::int64_t ld, std::uint16_t* output,
                                        std::int64_t rows, std::int64_t cols, bool vectorized) {
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float* in = input + r * ld;
    std::uint16_t* out = output + r * cols;
    const std::int64_t quads = vectorized ? cols / 4 : 0;
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
         i < quads; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
      reinterpret_cast<uint2*>(out)[i] =
          f32_to_bf16_op::four(reinterpret_cast<const float4*>(in)[i]);
    for (std::int64_t i =
             quads * 4 + blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
         i < cols; i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
      out[i] = f32_to_bf16_op::one(in[i]);
  }
}

}  // namespace

void f32_to_bf16_rows(const float* input, std::int64_t ld, std::uint16_t* output, std::int64_t rows,
                      std::int64_t cols, void* stream) {
  if (rows == 0 || cols == 0) return;
  if (ld == cols) return f32_to_bf16(input, output, rows * cols, stream);
  const bool vectorized = cols % 4 == 0 && ld % 4 == 0 && aligned(input, 16) && aligned(output, 8);
  const std::int64_t per_row = vectorized ? cols / 4 : cols;
  const dim3 grid(static_cast<unsigned>(std::clamp<std::int64_t>(
                      (per_row + threads_per_block - 1) / threads_per_block, 1, 64)),
                  static_cast<unsigned>(std::min<std::int64_t>(rows, 65535)));
  f32_to_bf16_rows_kernel<<<grid, threads_per_block, 0, static_cast<cudaStream_t>(stream)>>>(
      input, ld, output, rows, cols, vectorized);
  TROUPE_CUDA_CHECK(cudaGetLastError());
}

void f32_to_e4m3(const float* input, std::uint8_t* output, std::int64_t count, void* stream) {
  launch<f32_to_e4m3_op>(input, output, count, stream);
}

void e4m3_to_f32(const std::uint8_t* input, float* output, std::int64_t count, void* stream) {
  launch<e4m3_to_f32_op>(input, output, count, stream);
}

void f32_to_bf16(const float* input, std::uint16_t* output, std::int64_t count, void* stream) {
  launch<f32_to_bf16_op>(input, output, count, stream);
}

void bf16_to_f32(const std::uint16_t* input, float* output, std::int64_t count, void* stream) {
  launch<bf16_to_f32_op>(input, output, count, stream);
}

}  // namespace troupe::kernels::cuda
