#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/convert.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads_per_block = 256;

// NOTES: with `vectorized`, each thread converts groups of 4 consecutive elements so loads are
// 16 bytes (float4) and stores 4 bytes (e4m3) or 8 bytes (bf16); the last count % 4 elements, or
// all of them when the pointers are not aligned for vector access, go one by one. Grid-stride
// loops keep the grid small for huge tensors.

__device__ __forceinline__ std::int64_t thread_index() {
  return blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() {
  return static_cast<std::int64_t>(gridDim.x) * blockDim.x;
}

__device__ __forceinline__ std::uint8_t encode_e4m3(float value) {
  return __nv_cvt_float_to_fp8(value, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float decode_e4m3(std::uint32_t code) {
  const __half_raw half = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(code), __NV_E4M3);
  return __half2float(__half(half));
}

__device__ __forceinline__ std::uint16_t encode_bf16(float value) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(value));
}

__global__ void f32_to_e4m3_kernel(const float* __restrict__ input,
                                   std::uint8_t* __restrict__ output, std::int64_t count,
                                   bool vectorized) {
  const std::int64_t groups = vectorized ? count / 4 : 0;
  for (std::int64_t g = thread_index(); g < groups; g += grid_stride()) {
    const float4 v = reinterpret_cast<const float4*>(input)[g];
    const std::uint32_t low =
        __nv_cvt_float2_to_fp8x2(make_float2(v.x, v.y), __NV_SATFINITE, __NV_E4M3);
    const std::uint32_t high =
        __nv_cvt_float2_to_fp8x2(make_float2(v.z, v.w), __NV_SATFINITE, __NV_E4M3);
    reinterpret_cast<std::uint32_t*>(output)[g] = low | (high << 16);
  }
  for (std::int64_t i = groups * 4 + thread_index(); i < count; i += grid_stride())
    output[i] = encode_e4m3(input[i]);
}

__global__ void e4m3_to_f32_kernel(const std::uint8_t* __restrict__ input,
                                   float* __restrict__ output, std::int64_t count,
                                   bool vectorized) {
  const std::int64_t groups = vectorized ? count / 4 : 0;
  for (std::int64_t g = thread_index(); g < groups; g += grid_stride()) {
    const std::uint32_t codes = reinterpret_cast<const std::uint32_t*>(input)[g];
    reinterpret_cast<float4*>(output)[g] =
        make_float4(decode_e4m3(codes & 0xFFu), decode_e4m3((codes >> 8) & 0xFFu),
                    decode_e4m3((codes >> 16) & 0xFFu), decode_e4m3(codes >> 24));
  }
  for (std::int64_t i = groups * 4 + thread_index(); i < count; i += grid_stride())
    output[i] = decode_e4m3(input[i]);
}

__global__ void f32_to_bf16_kernel(const float* __restrict__ input,
                                   std::uint16_t* __restrict__ output, std::int64_t count,
                                   bool vectorized) {
  const std::int64_t groups = vectorized ? count / 4 : 0;
  for (std::int64_t g = thread_index(); g < groups; g += grid_stride()) {
    const float4 v = reinterpret_cast<const float4*>(input)[g];
    uint2 packed;
    packed.x = encode_bf16(v.x) | (static_cast<std::uint32_t>(encode_bf16(v.y)) << 16);
    packed.y = encode_bf16(v.z) | (static_cast<std::uint32_t>(encode_bf16(v.w)) << 16);
    reinterpret_cast<uint2*>(output)[g] = packed;
  }
  for (std::int64_t i = groups * 4 + thread_index(); i < count; i += grid_stride())
    output[i] = encode_bf16(input[i]);
}

__global__ void bf16_to_f32_kernel(const std::uint16_t* __restrict__ input,
                                   float* __restrict__ output, std::int64_t count,
                                   bool vectorized) {
  const std::int64_t groups = vectorized ? count / 4 : 0;
  for (std::int64_t g = thread_index(); g < groups; g += grid_stride()) {
    const uint2 packed = reinterpret_cast<const uint2*>(input)[g];
    reinterpret_cast<float4*>(output)[g] =
        make_float4(__uint_as_float(packed.x << 16), __uint_as_float(packed.x & 0xFFFF0000u),
                    __uint_as_float(packed.y << 16), __uint_as_float(packed.y & 0xFFFF0000u));
  }
  for (std::int64_t i = groups * 4 + thread_index(); i < count; i += grid_stride())
    output[i] = __uint_as_float(static_cast<std::uint32_t>(input[i]) << 16);
}

bool aligned(const void* pointer, std::uintptr_t alignment) {
  return reinterpret_cast<std::uintptr_t>(pointer) % alignment == 0;
}

/// Launches `kernel` over `count` elements with enough blocks to fill the GPU a few times over;
/// grid-stride loops do the rest.
template <class In, class Out>
void launch(void (*kernel)(const In*, Out*, std::int64_t, bool), const In* input, Out* output,
            std::int64_t count, void* stream) {
  if (count == 0) return;
  const bool vectorized = aligned(input, 4 * sizeof(In)) && aligned(output, 4 * sizeof(Out));
  const std::int64_t items = vectorized ? count / 4 + count % 4 : count;
  const std::int64_t blocks =
      std::clamp<std::int64_t>((items + threads_per_block - 1) / threads_per_block, 1, 16384);
  kernel<<<static_cast<unsigned>(blocks), threads_per_block, 0,
           static_cast<cudaStream_t>(stream)>>>(input, output, count, vectorized);
  TROUPE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void f32_to_e4m3(const float* input, std::uint8_t* output, std::int64_t count, void* stream) {
  launch(f32_to_e4m3_kernel, input, output, count, stream);
}

void e4m3_to_f32(const std::uint8_t* input, float* output, std::int64_t count, void* stream) {
  launch(e4m3_to_f32_kernel, input, output, count, stream);
}

void f32_to_bf16(const float* input, std::uint16_t* output, std::int64_t count, void* stream) {
  launch(f32_to_bf16_kernel, input, output, count, stream);
}

void bf16_to_f32(const std::uint16_t* input, float* output, std::int64_t count, void* stream) {
  launch(bf16_to_f32_kernel, input, output, count, stream);
}

}  // namespace troupe::kernels::cuda
