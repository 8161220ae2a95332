#include <cuda_bf16.h>

#include <cmath>

#include "kernels/cuda/latent_attention.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int warps_per_block = 4;

__device__ std::int64_t row_element(const paged_latent& cache, std::int32_t sequence,
                                    std::int64_t position) {
  const std::int32_t block =
      cache.block_tables[static_cast<std::int64_t>(sequence) * cache.max_blocks +
                         position / cache.block_tokens];
  return block * cache.block_stride + cache.layer_offset +
         (position % cache.block_tokens) * cache.width;
}

__device__ float cache_value(const paged_latent& cache, std::int64_t at) {
  return cache.bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(cache.pool)[at])
                    : static_cast<const float*>(cache.pool)[at];
}

__global__ void write_kernel(paged_latent cache, const std::int32_t* row_sequence,
                             const std::int64_t* row_position, const float* latent,
                             const float* rope, std::int64_t kv_rank, std::int64_t rope_dim) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t at = row_element(cache, row_sequence[r], row_position[r]);
  for (std::int64_t i = threadIdx.x; i < cache.width; i += blockDim.x) {
    const float v = i < kv_rank ? latent[r * kv_rank + i] : rope[r * rope_dim + (i - kv_rank)];
    if (cache.bf16)
      static_cast<__nv_bfloat16*>(cache.pool)[at + i] = __float2bfloat16(v);
    else
      static_cast<float*>(cache.pool)[at + i] = v;
  }
}

// NOTES: one block per (new row, head), flash-decoding style: each warp walks every
// warps_per_block-th cached position with an online softmax, lane l holding elements l, l + 32,
// ... of the query, the key and its accumulator (PerLane of each), so a key is read once per
// head and a score is one warp reduction. The warps' partial softmaxes merge in shared memory.
// The latent is shared by all heads, so a kernel over all heads per key (FlashMLA) would read
// the cache once per row instead of once per head: the next step when decode speed matters.
template <int PerLane>
__global__ void attention_kernel(paged_latent cache, const std::int32_t* row_sequence,
                                 const std::int64_t* row_position, const float* queries, float* out,
                                 std::int64_t heads, std::int64_t kv_rank, float scale) {
  extern __shared__ float shared[];  // [warps] m, [warps] l, [warps][kv_rank] accumulators
  const std::int64_t r = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t width = cache.width;
  const float* q = queries + (r * heads + h) * width;
  float query[PerLane], acc[PerLane];
#pragma unroll
  for (int t = 0; t < PerLane; ++t) {
    const std::int64_t i = lane + 32 * t;
    query[t] = i < width ? q[i] : 0.0f;
    acc[t] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const std::int32_t sequence = row_sequence[r];
  const std::int64_t last = row_position[r];
  for (std::int64_t j = warp; j <= last; j += warps_per_block) {
    const std::int64_t at = row_element(cache, sequence, j);
    float key[PerLane];
    float dot = 0.0f;
#pragma unroll
    for (int t = 0; t < PerLane; ++t) {
      const std::int64_t i = lane + 32 * t;
      key[t] = i < width ? cache_value(cache, at + i) : 0.0f;
      dot += query[t] * key[t];
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    const float s = dot * scale;
    const float m_new = fmaxf(m, s);
    const float correction = __expf(m - m_new), p = __expf(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int t = 0; t < PerLane; ++t)
      acc[t] = acc[t] * correction + (lane + 32 * t < kv_rank ? p * key[t] : 0.0f);
    m = m_new;
  }
  float* m_shared = shared;
  float* l_shared = shared + warps_per_block;
  float* acc_shared = shared + 2 * warps_per_block;
  if (lane == 0) {
    m_shared[warp] = m;
    l_shared[warp] = l;
  }
#pragma unroll
  for (int t = 0; t < PerLane; ++t) {
    const std::int64_t i = lane + 32 * t;
    if (i < kv_rank) acc_shared[warp * kv_rank + i] = acc[t];
  }
  __syncthreads();
  float top = -INFINITY;
  for (int w = 0; w < warps_per_block; ++w) top = fmaxf(top, m_shared[w]);
  float weights[warps_per_block], total = 0.0f;
  for (int w = 0; w < warps_per_block; ++w) {
    weights[w] = m_shared[w] == -INFINITY ? 0.0f : __expf(m_shared[w] - top);
    total += weights[w] * l_shared[w];
  }
  float* o = out + (r * heads + h) * kv_rank;
  for (std::int64_t i = threadIdx.x; i < kv_rank; i += blockDim.x) {
    float v = 0.0f;
    for (int w = 0; w < warps_per_block; ++w) v += weights[w] * acc_shared[w * kv_rank + i];
    o[i] = v / total;
  }
}

template <int PerLane>
void launch_attention(const paged_latent& cache, const std::int32_t* row_sequence,
                      const std::int64_t* row_position, const float* queries, float* out,
                      std::int64_t rows, std::int64_t heads, std::int64_t kv_rank, float scale,
                      cudaStream_t stream) {
  const std::size_t shared =
      sizeof(float) * static_cast<std::size_t>(2 * warps_per_block + warps_per_block * kv_rank);
  allow_shared_memory(attention_kernel<PerLane>, shared);
  attention_kernel<PerLane>
      <<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(heads)), 32 * warps_per_block,
         shared, stream>>>(cache, row_sequence, row_position, queries, out, heads, kv_rank, scale);
}

__global__ void rope_at_kernel(float* x, std::int64_t rows, std::int64_t stride, std::int64_t half,
                               std::int64_t heads, const std::int64_t* positions,
                               const float* cos_table, const float* sin_table) {
  const std::int64_t index = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * half) return;
  const std::int64_t r = index / half, i = index % half;
  const std::int64_t at = positions[r / heads] * half + i;
  const float c = cos_table[at], s = sin_table[at];
  float* v = x + r * stride + 2 * i;
  const float a = v[0], b = v[1];
  v[0] = a * c - b * s;
  v[1] = b * c + a * s;
}

}  // namespace

void latent_cache_write(const paged_latent& cache, const std::int32_t* row_sequence,
                        const std::int64_t* row_position, const float* latent, const float* rope,
                        std::int64_t rows, std::int64_t kv_rank, std::int64_t rope_dim,
                        void* stream) {
  require(cache.width == kv_rank + rope_dim, "latent_cache_write",
          "cache rows must hold kv_rank + rope_dim values");
  if (rows == 0) return;
  write_kernel<<<static_cast<unsigned>(rows), 128, 0, as_stream(stream)>>>(
      cache, row_sequence, row_position, latent, rope, kv_rank, rope_dim);
  TROUPE_CUDA_LAUNCHED();
}

void latent_attention(const paged_latent& cache, const std::int32_t* row_sequence,
                      const std::int64_t* row_position, const float* queries, float* out,
                      std::int64_t rows, std::int64_t heads, std::int64_t kv_rank, float scale,
                      void* stream) {
  require(kv_rank <= cache.width && cache.width <= 32 * 36, "latent_attention",
          "rows of at most 1,152 values holding the latent first");
  require(rows < (std::int64_t{1} << 31) && heads < 65536, "latent_attention",
          "at most 2^31 rows and 65,535 heads");
  if (rows == 0) return;
  const cudaStream_t s = as_stream(stream);
  if (cache.width <= 32 * 4)
    launch_attention<4>(cache, row_sequence, row_position, queries, out, rows, heads, kv_rank,
                        scale, s);
  else if (cache.width <= 32 * 8)
    launch_attention<8>(cache, row_sequence, row_position, queries, out, rows, heads, kv_rank,
                        scale, s);
  else if (cache.width <= 32 * 18)
    launch_attention<18>(cache, row_sequence, row_position, queries, out, rows, heads, kv_rank,
                         scale, s);
  else
    launch_attention<36>(cache, row_sequence, row_position, queries, out, rows, heads, kv_rank,
                         scale, s);
  TROUPE_CUDA_LAUNCHED();
}

void rope_rotate_at(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                    std::int64_t heads, const std::int64_t* positions, const float* cos_table,
                    const float* sin_table, void* stream) {
  require(dim % 2 == 0, "rope_rotate_at", "dim must be even");
  const std::int64_t half = dim / 2;
  if (rows * half == 0) return;
  rope_at_kernel<<<blocks_for(rows * half, 256), 256, 0, as_stream(stream)>>>(
      x, rows, stride, half, heads, positions, cos_table, sin_table);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
