#include <cuda_bf16.h>

#include <algorithm>

#include "kernels/cuda/adamw.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;
constexpr std::int64_t max_blocks_per_tensor = 1024;

__device__ inline float from_bf16(std::uint16_t bits) {
  return __uint_as_float(static_cast<std::uint32_t>(bits) << 16);
}
__device__ inline std::uint16_t to_bf16(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

// blockIdx.y picks the tensor, blocks of x stride over it.
__global__ void adamw_kernel(const adamw_tensor* tensors, adamw_hyper hyper,
                             const float* grad_scale) {
  const adamw_tensor t = tensors[blockIdx.y];
  const float scale = grad_scale != nullptr ? *grad_scale : hyper.grad_scale;
  const float decay = t.decays != 0 ? 1.0f - hyper.lr * hyper.weight_decay : 1.0f;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
       i < t.count; i += stride) {
    const float grad = t.grad[i] * scale;
    const float m1 = hyper.beta1 * from_bf16(t.exp_avg[i]) + (1.0f - hyper.beta1) * grad;
    const float v1 = hyper.beta2 * from_bf16(t.exp_avg_sq[i]) + (1.0f - hyper.beta2) * grad * grad;
    t.value[i] = t.value[i] * decay -
                 hyper.lr * (m1 / hyper.correction1) / (sqrtf(v1 / hyper.correction2) + hyper.eps);
    t.exp_avg[i] = to_bf16(m1);
    t.exp_avg_sq[i] = to_bf16(v1);
  }
}

}  // namespace

void adamw_step(const adamw_tensor* tensors, std::int64_t count, std::int64_t largest,
                const adamw_hyper& hyper, const float* grad_scale, void* stream) {
  require(count <= 65535, "adamw_step", "more than 65,535 tensors in one launch");
  if (count == 0 || largest == 0) return;
  const dim3 grid(static_cast<unsigned>(
                      std::min<std::int64_t>(blocks_for(largest, threads), max_blocks_per_tensor)),
                  static_cast<unsigned>(count));
  adamw_kernel<<<grid, threads, 0, as_stream(stream)>>>(tensors, hyper, grad_scale);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
