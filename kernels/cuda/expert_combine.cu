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
  launch_combine_forward(rows, gates, position, topk, width, y, tokens, stream);
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
  launch_combine_backward(dy, rows, gates, order, topk, width, d_gates, d_rows, begin, end, stream,
                          d_rows16);
}

void scatter_add_rows(const float* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t tokens, void* stream) {
  launch_scatter_add(d_rows, position, topk, width, dx, tokens, stream);
}

void scatter_add_rows(const std::uint16_t* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t tokens, void* stream) {
  launch_scatter_add(d_rows, position, topk, width, dx, tokens, stream);
}

}  // namespace troupe::kernels::cuda
