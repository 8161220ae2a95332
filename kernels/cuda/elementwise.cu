#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

__global__ void add_kernel(float* y, const float* x, std::int64_t count) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) y[i] += x[i];
}

__global__ void sum_slices_kernel(const float* x, std::int64_t slices, std::int64_t count,
                                  float* y) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float sum = 0.0f;
  for (std::int64_t s = 0; s < slices; ++s) sum += x[s * count + i];
  y[i] = sum;
}

}  // namespace

void add(float* y, const float* x, std::int64_t count, void* stream) {
  if (count == 0) return;
  add_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(y, x, count);
  TROUPE_CUDA_LAUNCHED();
}

void sum_slices(const float* x, std::int64_t slices, std::int64_t count, float* y, void* stream) {
  if (count == 0) return;
  sum_slices_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(x, slices, count,
                                                                                   y);
  TROUPE_CUDA_LAUNCHED();
}

void copy_2d(float* dst, std::int64_t ld_dst, const float* src, std::int64_t ld_src,
             std::int64_t rows, std::int64_t cols, void* stream) {
  if (rows * cols == 0) return;
  TROUPE_CUDA_CHECK(cudaMemcpy2DAsync(dst, static_cast<std::size_t>(ld_dst) * sizeof(float), src,
                                      static_cast<std::size_t>(ld_src) * sizeof(float),
                                      static_cast<std::size_t>(cols) * sizeof(float),
                                      static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice,
                                      as_stream(stream)));
}

}  // namespace troupe::kernels::cuda
