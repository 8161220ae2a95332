#pragma once

// What the model's CUDA kernels share: grid sizes, pointer alignment, warp and block reductions
// whose order is fixed by the launch shape (so a result never depends on scheduling); the stream
// cast and the precondition check come from check.cuh.

#include <cuda_runtime.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "kernels/cuda/check.cuh"

namespace troupe::kernels::cuda {

/// ceil(count / per) as a grid dimension.
inline unsigned blocks_for(std::int64_t count, std::int64_t per) {
  return static_cast<unsigned>((count + per - 1) / per);
}

/// Whether `pointer` is a multiple of `alignment` bytes (for vector loads and stores).
__host__ __device__ inline bool aligned(const void* pointer, std::uintptr_t alignment) {
  return reinterpret_cast<std::uintptr_t>(pointer) % alignment == 0;
}

/// Raises a kernel's dynamic shared memory limit to `bytes`, once per device.
template <class Kernel>
void allow_shared_memory(Kernel kernel, std::size_t bytes) {
  static std::mutex guard;
  static std::set<std::pair<int, const void*>> done;
  int ordinal = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&ordinal));
  std::lock_guard lock(guard);
  if (!done.insert({ordinal, reinterpret_cast<const void*>(kernel)}).second) return;
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
}

/// Device memory for a call's staging: the caller's when it gives some, else `bytes` from the
/// stream-ordered allocator, freed in stream order when the call returns.
struct stream_staging {
  stream_staging(void* given, std::size_t bytes, cudaStream_t stream) : stream(stream) {
    if (given != nullptr || bytes == 0) {
      data = given;
      return;
    }
    TROUPE_CUDA_CHECK(cudaMallocAsync(&data, bytes, stream));
    owned = true;
  }
  ~stream_staging() {
    if (owned) (void)cudaFreeAsync(data, stream);
  }
  stream_staging(const stream_staging&) = delete;
  stream_staging& operator=(const stream_staging&) = delete;
  void* data = nullptr;
  cudaStream_t stream;
  bool owned = false;
};

/// Checks the launch that was just enqueued (bad configurations show here, faults later).
#define TROUPE_CUDA_LAUNCHED() TROUPE_CUDA_CHECK(cudaGetLastError())

template <class T>
__device__ inline T warp_sum(T value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ inline float warp_max(float value) {
  for (int offset = 16; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

/// The sum over the block of every thread's `value`, returned to all threads. `shared` holds 32
/// T. Every thread of the block must call it; blockDim.x is a multiple of 32.
template <class T>
__device__ inline T block_sum(T value, T* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  value = warp_sum(value);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  value = lane < warps ? shared[lane] : T(0);
  return warp_sum(value);
}

/// The maximum over the block (as block_sum).
__device__ inline float block_max(float value, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  value = warp_max(value);
  __syncthreads();
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  value = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(value);
}

}  // namespace troupe::kernels::cuda
