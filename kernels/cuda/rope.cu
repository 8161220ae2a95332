#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rope.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

// NOTES: Index is 32-bit whenever rows * half fits (always at the model's sizes): the three
// divisions per pair cost several times as much in 64 bits, and this pass is memory-bound only
// when they are cheap.
template <class Index>
__global__ void rope_rotate_kernel(float* x, Index rows, std::int64_t stride, Index half,
                                   Index heads, Index length, const float* cos_table,
                                   const float* sin_table, float sign) {
  const Index index = blockIdx.x * blockDim.x + threadIdx.x;
  if (index >= rows * half) return;
  const Index r = index / half, i = index % half;
  const Index position = (r / heads) % length;
  const std::int64_t at = static_cast<std::int64_t>(position) * half + i;
  const float c = cos_table[at], s = sin_table[at];
  float2* pair = reinterpret_cast<float2*>(x + static_cast<std::int64_t>(r) * stride) + i;
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
  const float sign = direction >= 0 ? 1.0f : -1.0f;
  const unsigned blocks = blocks_for(rows * half, threads);
  if (rows * half < (std::int64_t{1} << 31) - threads)
    rope_rotate_kernel<std::uint32_t><<<blocks, threads, 0, as_stream(stream)>>>(
        x, static_cast<std::uint32_t>(rows), stride, static_cast<std::uint32_t>(half),
        static_cast<std::uint32_t>(heads), static_cast<std::uint32_t>(length), cos_table, sin_table,
        sign);
  else
    rope_rotate_kernel<std::int64_t><<<blocks, threads, 0, as_stream(stream)>>>(
        x, rows, stride, half, heads, length, cos_table, sin_table, sign);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
