#include <cuda_fp8.h>

#include <cstdint>
#include <mutex>
#include <set>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/fp8_quantize.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int tile = 128;
constexpr int threads = 256;
constexpr int warps = threads / 32;
// NOTES: one padding column keeps the column walks (transposed outputs, column amax) free of
// shared-memory bank conflicts: element (r, c) sits at r * 129 + c.
constexpr int pitch = tile + 1;
constexpr int shared_bytes = tile * pitch * static_cast<int>(sizeof(float)) + 2 * tile * 4;

__device__ float widen(float x) {
  return x;
}
__device__ float widen(std::uint16_t bits) {
  return __uint_as_float(static_cast<std::uint32_t>(bits) << 16);
}

__device__ std::uint8_t encode(float x) {
  return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

// NOTES: the scale arithmetic is written exactly as the host quantizer's: the factor 448 / amax
// and the scale amax / 448 are IEEE divisions (nvcc's default -prec-div=true), and the product
// x * factor is a single rounding with nothing to contract into an FMA. That is what makes the
// codes and scales bit-identical to the CPU's.
__device__ float clamp_amax(float amax) {
  return fmaxf(amax, 1e-4f);
}

template <class In>
__global__ void __launch_bounds__(threads)
    quantize_patches(const In* __restrict__ in, std::int64_t ld, std::int64_t rows,
                     std::int64_t cols, fp8_outputs out) {
  extern __shared__ float shared[];
  float* patch = shared;                    // [tile][pitch]
  float* row_amax = shared + tile * pitch;  // [tile]
  float* col_amax = row_amax + tile;        // [tile]

  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * tile;
  const std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * tile;
  const int height = rows - r0 < tile ? static_cast<int>(rows - r0) : tile;
  const int width = cols - c0 < tile ? static_cast<int>(cols - c0) : tile;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;

  // Load the patch, rows of 128 read by whole warps; outside the tensor is 0 (it never raises
  // an amax and is never written).
  for (int r = warp; r < tile; r += warps)
    for (int c = lane; c < tile; c += 32)
      patch[r * pitch + c] = r < height && c < width ? widen(in[(r0 + r) * ld + c0 + c]) : 0.0f;
  __syncthreads();

  // amax of each row and of each column of the patch.
  for (int r = warp; r < tile; r += warps) {
    float m = 0.0f;
    for (int c = lane; c < tile; c += 32) m = fmaxf(m, fabsf(patch[r * pitch + c]));
    for (int offset = 16; offset > 0; offset /= 2)
      m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, offset));
    if (lane == 0) row_amax[r] = m;
  }
  if (threadIdx.x < tile) {
    float m = 0.0f;
    for (int r = 0; r < tile; ++r) m = fmaxf(m, fabsf(patch[r * pitch + threadIdx.x]));
    col_amax[threadIdx.x] = m;
  }
  __syncthreads();

  float block_amax = 0.0f;
  if (out.blocks.codes != nullptr || out.blocks_transposed.codes != nullptr) {
    for (int r = 0; r < tile; ++r) block_amax = fmaxf(block_amax, row_amax[r]);
    block_amax = clamp_amax(block_amax);
  }
  const float block_factor = 448.0f / block_amax;
  const float block_scale = block_amax / 448.0f;

  if (out.row_tiles.codes != nullptr) {
    const fp8_output& o = out.row_tiles;
    for (int r = warp; r < height; r += warps) {
      const float amax = clamp_amax(row_amax[r]);
      const float factor = 448.0f / amax;
      for (int c = lane; c < width; c += 32)
        o.codes[(r0 + r) * cols + c0 + c] = encode(patch[r * pitch + c] * factor);
      if (lane == 0)
        o.scale[(r0 + r) * o.scale_stride_0 + blockIdx.x * o.scale_stride_1] = amax / 448.0f;
    }
  }
  if (out.column_tiles_transposed.codes != nullptr) {
    const fp8_output& o = out.column_tiles_transposed;
    for (int c = warp; c < width; c += warps) {
      const float amax = clamp_amax(col_amax[c]);
      const float factor = 448.0f / amax;
      for (int r = lane; r < height; r += 32)
        o.codes[(c0 + c) * rows + r0 + r] = encode(patch[r * pitch + c] * factor);
      if (lane == 0)
        o.scale[(c0 + c) * o.scale_stride_0 + blockIdx.y * o.scale_stride_1] = amax / 448.0f;
    }
  }
  if (out.blocks.codes != nullptr) {
    const fp8_output& o = out.blocks;
    for (int r = warp; r < height; r += warps)
      for (int c = lane; c < width; c += 32)
        o.codes[(r0 + r) * cols + c0 + c] = encode(patch[r * pitch + c] * block_factor);
    if (threadIdx.x == 0)
      o.scale[blockIdx.y * o.scale_stride_0 + blockIdx.x * o.scale_stride_1] = block_scale;
  }
  if (out.blocks_transposed.codes != nullptr) {
    const fp8_output& o = out.blocks_transposed;
    for (int c = warp; c < width; c += warps)
      for (int r = lane; r < height; r += 32)
        o.codes[(c0 + c) * rows + r0 + r] = encode(patch[r * pitch + c] * block_factor);
    if (threadIdx.x == 0)
      o.scale[blockIdx.x * o.scale_stride_0 + blockIdx.y * o.scale_stride_1] = block_scale;
  }
}

template <class In>
void launch(const In* in, std::int64_t ld, std::int64_t rows, std::int64_t cols,
            const fp8_outputs& out, void* stream) {
  if (rows <= 0 || cols <= 0) return;
  // NOTES: 66 KB of shared memory per block is above the 48 KB a kernel gets without asking. The
  // attribute is per device and the call is not free (it showed as ~0.4 ms per cast when made at
  // every launch), so it is made once per device and input type.
  static std::mutex guard;
  static std::set<int> configured;
  int ordinal = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&ordinal));
  {
    std::lock_guard lock(guard);
    if (configured.insert(ordinal).second)
      TROUPE_CUDA_CHECK(cudaFuncSetAttribute(
          quantize_patches<In>, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes));
  }
  const dim3 grid(static_cast<unsigned>((cols + tile - 1) / tile),
                  static_cast<unsigned>((rows + tile - 1) / tile));
  quantize_patches<In>
      <<<grid, threads, shared_bytes, static_cast<cudaStream_t>(stream)>>>(in, ld, rows, cols, out);
  TROUPE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void fp8_quantize(const float* in, std::int64_t ld, std::int64_t rows, std::int64_t cols,
                  const fp8_outputs& out, void* stream) {
  launch(in, ld, rows, cols, out, stream);
}

void fp8_quantize(const std::uint16_t* in, std::int64_t ld, std::int64_t rows, std::int64_t cols,
                  const fp8_outputs& out, void* stream) {
  launch(in, ld, rows, cols, out, stream);
}

}  // namespace troupe::kernels::cuda
