#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/adamw.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;
constexpr int per_thread = 4;  // elements per thread and pass: one float4 of values and gradients
constexpr int passes = 8;      // a block covers threads * per_thread * passes elements of a tensor
constexpr std::int64_t block_elements = std::int64_t{threads} * per_thread * passes;

__device__ inline float from_bf16(std::uint16_t bits) {
  return __uint_as_float(static_cast<std::uint32_t>(bits) << 16);
}
__device__ inline std::uint16_t to_bf16(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

struct update {
  float scale, decay, lr, beta1, beta2, c1, c2, eps;
  __device__ void operator()(float& p, float g, std::uint16_t& m, std::uint16_t& v) const {
    g *= scale;
    const float m1 = beta1 * from_bf16(m) + (1.0f - beta1) * g;
    const float v1 = beta2 * from_bf16(v) + (1.0f - beta2) * g * g;
    p = p * decay - lr * (m1 / c1) / (sqrtf(v1 / c2) + eps);
    m = to_bf16(m1);
    v = to_bf16(v1);
  }
};

/// The tensor whose blocks include `block`: the last t with first_block <= block.
__device__ inline std::int64_t tensor_of(const adamw_tensor* tensors, std::int64_t count,
                                         std::int64_t block) {
  std::int64_t low = 0, high = count;  // first_block[low] <= block < first_block[high]
  while (high - low > 1) {
    const std::int64_t middle = (low + high) / 2;
    (tensors[middle].first_block <= block ? low : high) = middle;
  }
  return low;
}

// NOTES: each tensor gets blocks in proportion to its size (adamw_plan), so a step over thousands
// of tensors of very different sizes (an embedding of 67 M, norms of 2 K) launches no empty
// blocks. Where a tensor's four arrays are aligned for it, a thread moves four elements per load
// (float4 of values and gradients, 8 bytes of each moment): scalar accesses of 2-byte moments
// held the kernel at 3.0 TB/s on the medium config.
__global__ void __launch_bounds__(threads)
    adamw_kernel(const adamw_tensor* tensors, std::int64_t count, adamw_hyper hyper,
                 const float* grad_scale) {
  const adamw_tensor t = tensors[tensor_of(tensors, count, blockIdx.x)];
  const update u{grad_scale != nullptr ? *grad_scale : hyper.grad_scale,
                 t.decays != 0 ? 1.0f - hyper.lr * hyper.weight_decay : 1.0f,
                 hyper.lr,
                 hyper.beta1,
                 hyper.beta2,
                 hyper.correction1,
                 hyper.correction2,
                 hyper.eps};
  const std::int64_t begin = (blockIdx.x - t.first_block) * block_elements;
  const std::int64_t end = min(begin + block_elements, t.count);
  std::uint16_t* const copy = t.bf16_copy;
  const bool vectors = aligned(t.value, 16) && aligned(t.grad, 16) && aligned(t.exp_avg, 8) &&
                       aligned(t.exp_avg_sq, 8) && (copy == nullptr || aligned(copy, 8));
  std::int64_t scalar_from = begin;
  if (vectors) {
    const std::int64_t quads_end = begin + (end - begin) / per_thread * per_thread;
    for (std::int64_t i = begin + threadIdx.x * per_thread; i < quads_end;
         i += threads * per_thread) {
      float4 p = *reinterpret_cast<const float4*>(t.value + i);
      const float4 g = *reinterpret_cast<const float4*>(t.grad + i);
      uint2 m = *reinterpret_cast<const uint2*>(t.exp_avg + i);
      uint2 v = *reinterpret_cast<const uint2*>(t.exp_avg_sq + i);
      auto* ms = reinterpret_cast<std::uint16_t*>(&m);
      auto* vs = reinterpret_cast<std::uint16_t*>(&v);
      u(p.x, g.x, ms[0], vs[0]);
      u(p.y, g.y, ms[1], vs[1]);
      u(p.z, g.z, ms[2], vs[2]);
      u(p.w, g.w, ms[3], vs[3]);
      *reinterpret_cast<float4*>(t.value + i) = p;
      *reinterpret_cast<uint2*>(t.exp_avg + i) = m;
      *reinterpret_cast<uint2*>(t.exp_avg_sq + i) = v;
      if (copy != nullptr) {
        uint2 rounded;
        auto* r = reinterpret_cast<std::uint16_t*>(&rounded);
        r[0] = to_bf16(p.x), r[1] = to_bf16(p.y), r[2] = to_bf16(p.z), r[3] = to_bf16(p.w);
        *reinterpret_cast<uint2*>(copy + i) = rounded;
      }
    }
    scalar_from = quads_end;
  }
  for (std::int64_t i = scalar_from + threadIdx.x; i < end; i += threads) {
    u(t.value[i], t.grad[i], t.exp_avg[i], t.exp_avg_sq[i]);
    if (copy != nullptr) copy[i] = to_bf16(t.value[i]);
  }
}

}  // namespace

std::int64_t adamw_plan(adamw_tensor* tensors, std::int64_t count) {
  std::int64_t blocks = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    tensors[i].first_block = blocks;
    blocks += (tensors[i].count + block_elements - 1) / block_elements;
  }
  return blocks;
}

void adamw_step(const adamw_tensor* tensors, std::int64_t count, std::int64_t blocks,
                const adamw_hyper& hyper, const float* grad_scale, void* stream) {
  require(blocks <= 0x7FFFFFFF, "adamw_step", "more than 2^31 - 1 blocks in one launch");
  if (count == 0 || blocks == 0) return;
  adamw_kernel<<<static_cast<unsigned>(blocks), threads, 0, as_stream(stream)>>>(tensors, count,
                                                                                 hyper, grad_scale);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
