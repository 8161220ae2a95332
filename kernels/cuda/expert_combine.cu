#include "kernels/cuda/expert_combine.hpp"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/sort_indices.hpp"

#include <cuda_bf16.h>

#include <type_traits>

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

std::size_t aligned(std::size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

// offsets[e] = the first row whose expert is >= e (a lower bound in the sorted experts).
__global__ void offsets_kernel(const std::int32_t* sorted, std::int64_t pairs, std::int64_t experts,
                               std::int64_t* offsets) {
  const std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (e > experts) return;
  std::int64_t low = 0, high = pairs;
  while (low < high) {
    const std::int64_t middle = (low + high) / 2;
    if (sorted[middle] < e)
      low = middle + 1;
    else
      high = middle;
  }
  offsets[e] = low;
}

__global__ void position_kernel(const std::int64_t* order, std::int64_t pairs,
                                std::int64_t* position) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (r < pairs) position[order[r]] = r;
}

// One block per row; float4 when the width allows.
__global__ void gather_kernel(const float* x, const std::int64_t* order, std::int64_t topk,
                              std::int64_t width, float* out, std::int64_t begin) {
  const std::int64_t r = begin + blockIdx.x;
  const float* source = x + (order[r] / topk) * width;
  float* target = out + r * width;
  if (width % 4 == 0) {
    const auto* s4 = reinterpret_cast<const float4*>(source);
    auto* t4 = reinterpret_cast<float4*>(target);
    for (std::int64_t i = threadIdx.x; i < width / 4; i += blockDim.x) t4[i] = s4[i];
  } else {
    for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) target[i] = source[i];
  }
}

// NOTES: the per-token passes take columns from the grid's x and tokens from its y (walking
// them with the grid's stride): a flat index split by a 64-bit division per element made them
// bound by instructions.
/// A row element as f32: rows come in f32 or as BF16 bits (the experts' BF16 outputs).
__device__ inline float value_of(float v) {
  return v;
}
__device__ inline float value_of(std::uint16_t bits) {
  return __uint_as_float(static_cast<std::uint32_t>(bits) << 16);
}

template <class Row>
__global__ void combine_forward_kernel(const Row* rows, const float* gates,
                                       const std::int64_t* position, std::int64_t topk,
                                       std::int64_t width, float* y, std::int64_t tokens) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  for (std::int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    float sum = y[t * width + c];
    for (std::int64_t k = 0; k < topk; ++k)
      sum += gates[t * topk + k] * value_of(rows[position[t * topk + k] * width + c]);
    y[t * width + c] = sum;
  }
}

/// `Row` float or std::uint16_t (the rows' BF16 bits); `Out` float (d_rows) or std::uint16_t
/// (BF16 bits, round to nearest even).
template <class Row, class Out>
__global__ void combine_backward_kernel(const float* dy, const Row* rows, const float* gates,
                                        const std::int64_t* order, std::int64_t topk,
                                        std::int64_t width, float* d_gates, Out* d_rows,
                                        std::int64_t begin) {
  __shared__ float shared[32];
  const std::int64_t r = begin + blockIdx.x;
  const std::int64_t a = order[r];
  const float* dy_row = dy + (a / topk) * width;
  const Row* row = rows + r * width;
  Out* d_row = d_rows + r * width;
  const float gate = gates[a];
  float dot = 0.0f;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    dot += dy_row[i] * value_of(row[i]);
    if constexpr (std::is_same_v<Out, float>)
      d_row[i] = gate * dy_row[i];
    else
      d_row[i] = __bfloat16_as_ushort(__float2bfloat16_rn(gate * dy_row[i]));
  }
  dot = block_sum(dot, shared);
  if (threadIdx.x == 0) d_gates[a] = dot;
}

template <class Row>
__global__ void scatter_add_kernel(const Row* d_rows, const std::int64_t* position,
                                   std::int64_t topk, std::int64_t width, float* dx,
                                   std::int64_t tokens) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  for (std::int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    float sum = dx[t * width + c];
    for (std::int64_t k = 0; k < topk; ++k)
      sum += value_of(d_rows[position[t * topk + k] * width + c]);
    dx[t * width + c] = sum;
  }
}

// NOTES: the passes over BF16 rows (the experts' BF16 outputs and their gradients, 49,152 rows of
// 2,048 per medium layer) move four columns per thread: 8 bytes of each row and a float4 of y or
// dx. One column per thread made 2-byte loads, half a sector per warp request. The sums run in
// the same order as the one-column kernels, so both give the same bits.
__device__ inline float4 quad_of(const std::uint16_t* row) {
  const uint2 w = *reinterpret_cast<const uint2*>(row);
  return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u),
                     __uint_as_float(w.y << 16), __uint_as_float(w.y & 0xffff0000u));
}

__global__ void combine_forward_quads(const std::uint16_t* rows, const float* gates,
                                      const std::int64_t* position, std::int64_t topk,
                                      std::int64_t width, float* y, std::int64_t tokens) {
  const std::int64_t c = 4 * (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x);
  if (c >= width) return;
  for (std::int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    float4* out = reinterpret_cast<float4*>(y + t * width + c);
    float4 sum = *out;
    for (std::int64_t k = 0; k < topk; ++k) {
      const float g = gates[t * topk + k];
      const float4 r = quad_of(rows + position[t * topk + k] * width + c);
      sum.x += g * r.x;
      sum.y += g * r.y;
      sum.z += g * r.z;
      sum.w += g * r.w;
    }
    *out = sum;
  }
}

__global__ void scatter_add_quads(const std::uint16_t* d_rows, const std::int64_t* position,
                                  std::int64_t topk, std::int64_t width, float* dx,
                                  std::int64_t tokens) {
  const std::int64_t c = 4 * (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x);
  if (c >= width) return;
  for (std::int64_t t = blockIdx.y; t < tokens; t += gridDim.y) {
    float4* out = reinterpret_cast<float4*>(dx + t * width + c);
    float4 sum = *out;
    for (std::int64_t k = 0; k < topk; ++k) {
      const float4 r = quad_of(d_rows + position[t * topk + k] * width + c);
      sum.x += r.x;
      sum.y += r.y;
      sum.z += r.z;
      sum.w += r.w;
    }
    *out = sum;
  }
}

/// combine_backward over BF16 rows into BF16 row gradients, four columns per thread.
__global__ void combine_backward_quads(const float* dy, const std::uint16_t* rows,
                                       const float* gates, const std::int64_t* order,
                                       std::int64_t topk, std::int64_t width, float* d_gates,
                                       std::uint16_t* d_rows, std::int64_t begin) {
  __shared__ float shared[32];
  const std::int64_t r = begin + blockIdx.x;
  const std::int64_t a = order[r];
  const float* dy_row = dy + (a / topk) * width;
  const std::uint16_t* row = rows + r * width;
  std::uint16_t* d_row = d_rows + r * width;
  const float gate = gates[a];
  float dot = 0.0f;
  for (std::int64_t i = 4 * threadIdx.x; i < width; i += 4 * blockDim.x) {
    const float4 d = *reinterpret_cast<const float4*>(dy_row + i);
    const float4 v = quad_of(row + i);
    dot += d.x * v.x;
    dot += d.y * v.y;
    dot += d.z * v.z;
    dot += d.w * v.w;
    const __nv_bfloat162 low = __floats2bfloat162_rn(gate * d.x, gate * d.y);
    const __nv_bfloat162 high = __floats2bfloat162_rn(gate * d.z, gate * d.w);
    *reinterpret_cast<uint2*>(d_row + i) =
        make_uint2(*reinterpret_cast<const std::uint32_t*>(&low),
                   *reinterpret_cast<const std::uint32_t*>(&high));
  }
  dot = block_sum(dot, shared);
  if (threadIdx.x == 0) d_gates[a] = dot;
}

/// combine_backward by token (BF16 rows and row gradients): block t reads dy[t] once for its
/// topk rows (the row-by-row kernel reads it once per row: topk times), the dot products of all
/// its slots reduced together.
constexpr int max_token_slots = 16;

__global__ void combine_backward_tokens(const float* dy, const std::uint16_t* rows,
                                        const float* gates, const std::int64_t* position,
                                        std::int64_t topk, std::int64_t width, float* d_gates,
                                        std::uint16_t* d_rows) {
  __shared__ float partial[32][max_token_slots];
  const std::int64_t t = blockIdx.x;
  const float* dy_row = dy + t * width;
  float dot[max_token_slots];
#pragma unroll
  for (int k = 0; k < max_token_slots; ++k) dot[k] = 0.0f;
  for (std::int64_t i = 4 * threadIdx.x; i < width; i += 4 * blockDim.x) {
    const float4 d = *reinterpret_cast<const float4*>(dy_row + i);
#pragma unroll
    for (int k = 0; k < max_token_slots; ++k) {
      if (k >= topk) break;
      const std::int64_t r = position[t * topk + k];
      const float4 v = quad_of(rows + r * width + i);
      dot[k] += d.x * v.x;
      dot[k] += d.y * v.y;
      dot[k] += d.z * v.z;
      dot[k] += d.w * v.w;
      const float gate = gates[t * topk + k];
      const __nv_bfloat162 low = __floats2bfloat162_rn(gate * d.x, gate * d.y);
      const __nv_bfloat162 high = __floats2bfloat162_rn(gate * d.z, gate * d.w);
      *reinterpret_cast<uint2*>(d_rows + r * width + i) =
          make_uint2(*reinterpret_cast<const std::uint32_t*>(&low),
                     *reinterpret_cast<const std::uint32_t*>(&high));
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < max_token_slots; ++k) {
    if (k >= topk) break;
    float v = dot[k];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < topk) {
    float sum = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) sum += partial[w][threadIdx.x];
    d_gates[t * topk + threadIdx.x] = sum;
  }
}

/// Whether the BF16 rows' quad kernels fit: width a multiple of 4, the f32 arrays 16-byte and
/// the BF16 ones 8-byte aligned.
bool quads_fit(std::int64_t width, const void* f32, const void* bf16_a,
               const void* bf16_b = nullptr) {
  const auto at = [](const void* p, std::uintptr_t n) {
    return reinterpret_cast<std::uintptr_t>(p) % n == 0;
  };
  return width % 4 == 0 && at(f32, 16) && at(bf16_a, 8) && at(bf16_b, 8);
}

/// Columns by x, tokens by y (at most 65535 blocks).
dim3 token_grid(std::int64_t tokens, std::int64_t width) {
  return dim3(blocks_for(width, threads), static_cast<unsigned>(tokens < 65535 ? tokens : 65535));
}

}  // namespace

std::size_t group_by_expert_scratch_bytes(std::int64_t pairs, std::int64_t experts) {
  return aligned(static_cast<std::size_t>(pairs) * sizeof(std::int32_t)) +
         sort_indices_scratch_bytes(pairs, static_cast<std::int32_t>(experts));
}

void group_by_expert(const std::int32_t* selected, std::int64_t tokens, std::int64_t topk,
                     std::int64_t experts, expert_grouping_view out, void* scratch,
                     std::size_t scratch_bytes, void* stream) {
  const std::int64_t pairs = tokens * topk;
  require(experts > 0 && experts < (std::int64_t{1} << 30), "group_by_expert",
          "expert count out of range");
  require(scratch_bytes >= group_by_expert_scratch_bytes(pairs, experts), "group_by_expert",
          "scratch smaller than group_by_expert_scratch_bytes");
  auto* sorted = static_cast<std::int32_t*>(scratch);
  const std::size_t sorted_bytes = aligned(static_cast<std::size_t>(pairs) * sizeof(std::int32_t));
  sort_indices_by_key(selected, pairs, static_cast<std::int32_t>(experts), sorted, out.order,
                      static_cast<char*>(scratch) + sorted_bytes, scratch_bytes - sorted_bytes,
                      stream);
  offsets_kernel<<<blocks_for(experts + 1, threads), threads, 0, as_stream(stream)>>>(
      sorted, pairs, experts, out.offsets);
  TROUPE_CUDA_LAUNCHED();
  if (pairs == 0) return;
  position_kernel<<<blocks_for(pairs, threads), threads, 0, as_stream(stream)>>>(out.order, pairs,
                                                                                 out.position);
  TROUPE_CUDA_LAUNCHED();
}

void gather_expert_rows(const float* x, const std::int64_t* order, std::int64_t topk,
                        std::int64_t width, float* out, std::int64_t begin, std::int64_t end,
                        void* stream) {
  if (end <= begin) return;
  gather_kernel<<<static_cast<unsigned>(end - begin), 128, 0, as_stream(stream)>>>(
      x, order, topk, width, out, begin);
  TROUPE_CUDA_LAUNCHED();
}

namespace {

template <class Row>
void launch_combine_forward(const Row* rows, const float* gates, const std::int64_t* position,
                            std::int64_t topk, std::int64_t width, float* y, std::int64_t tokens,
                            void* stream) {
  if (tokens * width == 0) return;
  combine_forward_kernel<<<token_grid(tokens, width), threads, 0, as_stream(stream)>>>(
      rows, gates, position, topk, width, y, tokens);
  TROUPE_CUDA_LAUNCHED();
}

template <class Row>
void launch_combine_backward(const float* dy, const Row* rows, const float* gates,
                             const std::int64_t* order, std::int64_t topk, std::int64_t width,
                             float* d_gates, float* d_rows, std::int64_t begin, std::int64_t end,
                             void* stream, std::uint16_t* d_rows16) {
  if (end <= begin) return;
  require((d_rows == nullptr) != (d_rows16 == nullptr), "combine_backward",
          "exactly one of d_rows and d_rows16");
  const unsigned blocks = static_cast<unsigned>(end - begin);
  if (d_rows16 != nullptr)
    combine_backward_kernel<<<blocks, 128, 0, as_stream(stream)>>>(dy, rows, gates, order, topk,
                                                                   width, d_gates, d_rows16, begin);
  else
    combine_backward_kernel<<<blocks, 128, 0, as_stream(stream)>>>(dy, rows, gates, order, topk,
                                                                   width, d_gates, d_rows, begin);
  TROUPE_CUDA_LAUNCHED();
}

template <class Row>
void launch_scatter_add(const Row* d_rows, const std::int64_t* position, std::int64_t topk,
                        std::int64_t width, float* dx, std::int64_t tokens, void* stream) {
  if (tokens * width == 0) return;
  scatter_add_kernel<<<token_grid(tokens, width), threads, 0, as_stream(stream)>>>(
      d_rows, position, topk, width, dx, tokens);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace

void combine_forward(const float* rows, const float* gates, const std::int64_t* position,
                     std::int64_t topk, std::int64_t width, float* y, std::int64_t tokens,
                     void* stream) {
  launch_combine_forward(rows, gates, position, topk, width, y, tokens, stream);
}

void combine_forward(const std::uint16_t* rows, const float* gates, const std::int64_t* position,
                     std::int64_t topk, std::int64_t width, float* y, std::int64_t tokens,
                     void* stream) {
  if (tokens * width == 0) return;
  if (!quads_fit(width, y, rows))
    return launch_combine_forward(rows, gates, position, topk, width, y, tokens, stream);
  combine_forward_quads<<<token_grid(tokens, width / 4), threads, 0, as_stream(stream)>>>(
      rows, gates, position, topk, width, y, tokens);
  TROUPE_CUDA_LAUNCHED();
}

void combine_backward(const float* dy, const float* rows, const float* gates,
                      const std::int64_t* order, std::int64_t topk, std::int64_t width,
                      float* d_gates, float* d_rows, std::int64_t begin, std::int64_t end,
                      void* stream, std::uint16_t* d_rows16) {
  launch_combine_backward(dy, rows, gates, order, topk, width, d_gates, d_rows, begin, end, stream,
                          d_rows16);
}

void combine_backward(const float* dy, const std::uint16_t* rows, const float* gates,
                      const std::int64_t* order, std::int64_t topk, std::int64_t width,
                      float* d_gates, float* d_rows, std::int64_t begin, std::int64_t end,
                      void* stream, std::uint16_t* d_rows16) {
  if (end > begin && d_rows == nullptr && d_rows16 != nullptr &&
      quads_fit(width, dy, rows, d_rows16)) {
    combine_backward_quads<<<static_cast<unsigned>(end - begin), 128, 0, as_stream(stream)>>>(
        dy, rows, gates, order, topk, width, d_gates, d_rows16, begin);
    TROUPE_CUDA_LAUNCHED();
    return;
  }
  launch_combine_backward(dy, rows, gates, order, topk, width, d_gates, d_rows, begin, end, stream,
                          d_rows16);
}

void scatter_add_rows(const float* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t tokens, void* stream) {
  launch_scatter_add(d_rows, position, topk, width, dx, tokens, stream);
}

void scatter_add_rows(const std::uint16_t* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t tokens, void* stream) {
  if (tokens * width == 0) return;
  if (!quads_fit(width, dx, d_rows))
    return launch_scatter_add(d_rows, position, topk, width, dx, tokens, stream);
  scatter_add_quads<<<token_grid(tokens, width / 4), threads, 0, as_stream(stream)>>>(
      d_rows, position, topk, width, dx, tokens);
  TROUPE_CUDA_LAUNCHED();
}

void combine_backward_by_token(const float* dy, const std::uint16_t* rows, const float* gates,
                               const std::int64_t* position, std::int64_t topk, std::int64_t width,
                               float* d_gates, std::uint16_t* d_rows, std::int64_t tokens,
                               void* stream) {
  require(topk >= 1 && topk <= max_token_slots && quads_fit(width, dy, rows, d_rows),
          "combine_backward_by_token",
          "needs 1 to 16 slots, a width of a multiple of 4 and aligned rows");
  if (tokens == 0) return;
  combine_backward_tokens<<<static_cast<unsigned>(tokens), threads, 0, as_stream(stream)>>>(
      dy, rows, gates, position, topk, width, d_gates, d_rows);
  TROUPE_CUDA_LAUNCHED();
}

bool combine_backward_by_token_fits(const float* dy, const std::uint16_t* rows,
                                    const std::uint16_t* d_rows, std::int64_t topk,
                                    std::int64_t width, std::int64_t tokens) {
  return topk >= 1 && topk <= max_token_slots && tokens < (std::int64_t{1} << 31) &&
         quads_fit(width, dy, rows, d_rows);
}

}  // namespace troupe::kernels::cuda
