#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

__global__ void rope_rotate_kernel(float* x, std::int64_t rows, std::int64_t stride,
                                   std::int64_t half, std::int64_t heads, std::int64_t length,
                                   const float* cos_table, const float* sin_table, float sign) {
  const std::int64_t index = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (index >= rows * half) return;
  const std::int64_t r = index / half, i = index % half;
  const std::int64_t position = (r / heads) % length;
  const float c = cos_table[position * half + i], s = sin_table[position * half + i];
  float2* pair = reinterpret_cast<float2*>(x + r * stride) + i;
  const float2 v = *pair;
  *pair = make_float2(v.x * c - sign * v.y * s, v.y * c + sign * v.x * s);
}

}  // namespace

void rope_rotate(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                 std::int64_t heads, std::int64_t length, const float* cos_table,
                 const float* sin_table, int direction, void* stream) {
  require(dim % 2 == 0 && stride % 2 == 0, "rope_rotate", "dim and stride must be even");
  const std::int64_t half = dim / 2;
  if (rows * half == 0) return;
  rope_rotate_kernel<<<blocks_for(rows * half, threads), threads, 0, as_stream(stream)>>>(
      x, rows, stride, half, heads, length, cos_table, sin_table, direction >= 0 ? 1.0f : -1.0f);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
