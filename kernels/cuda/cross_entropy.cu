#include <cuda_bf16.h>

#include "kernels/cuda/cross_entropy.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 512;

__global__ void cross_entropy_forward_kernel(const float* logits, std::int64_t ld,
                                             const std::int32_t* targets, std::int64_t vocab,
                                             float* losses, float* lse) {
  __shared__ float shared[32];
  const std::int64_t r = blockIdx.x;
  const float* row = logits + r * ld;
  float max_logit = -INFINITY;
  for (std::int64_t v = threadIdx.x; v < vocab; v += blockDim.x)
    max_logit = fmaxf(max_logit, row[v]);
  max_logit = block_max(max_logit, shared);
  float sum = 0.0f;
  for (std::int64_t v = threadIdx.x; v < vocab; v += blockDim.x) sum += expf(row[v] - max_logit);
  sum = block_sum(sum, shared);
  if (threadIdx.x != 0) return;
  const float log_sum = max_logit + logf(sum);
  lse[r] = log_sum;
  const std::int32_t target = targets[r];
  losses[r] = target >= 0 ? log_sum - row[target] : 0.0f;
}

__device__ inline void store(float* to, float v) {
  *to = v;
}
__device__ inline void store(std::uint16_t* to, float v) {
  *to = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <class Out>
__global__ void cross_entropy_backward_kernel(const float* logits, std::int64_t ld,
                                              const std::int32_t* targets, const float* lse,
                                              std::int64_t vocab, float scale, Out* dlogits,
                                              std::int64_t ld_out) {
  const std::int64_t r = blockIdx.x;
  const float* row = logits + r * ld;
  Out* d = dlogits + r * ld_out;
  const std::int32_t target = targets[r];
  const float log_sum = lse[r];
  for (std::int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float gradient = target < 0 ? 0.0f : scale * (expf(row[v] - log_sum) - (v == target));
    store(d + v, gradient);
  }
}

__global__ void sum_losses_kernel(const float* losses, const std::int32_t* targets,
                                  std::int64_t rows, double* total, std::int64_t* labelled) {
  __shared__ double shared_sum[32];
  __shared__ long long shared_count[32];
  double sum = 0.0;
  long long count = 0;
  for (std::int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    sum += static_cast<double>(losses[r]);
    count += targets[r] >= 0;
  }
  sum = block_sum(sum, shared_sum);
  count = block_sum(count, shared_count);
  if (threadIdx.x == 0) {
    *total = sum;
    *labelled = count;
  }
}

}  // namespace

void cross_entropy_forward(const float* logits, std::int64_t ld, const std::int32_t* targets,
                           std::int64_t rows, std::int64_t vocab, float* losses, float* lse,
                           void* stream) {
  if (rows == 0) return;
  cross_entropy_forward_kernel<<<static_cast<unsigned>(rows), threads, 0, as_stream(stream)>>>(
      logits, ld, targets, vocab, losses, lse);
  TROUPE_CUDA_LAUNCHED();
}

void cross_entropy_backward(const float* logits, std::int64_t ld, const std::int32_t* targets,
                            const float* lse, std::int64_t rows, std::int64_t vocab, float scale,
                            float* dlogits, void* stream) {
  if (rows == 0) return;
  cross_entropy_backward_kernel<<<static_cast<unsigned>(rows), threads, 0, as_stream(stream)>>>(
      logits, ld, targets, lse, vocab, scale, dlogits, ld);
  TROUPE_CUDA_LAUNCHED();
}

void cross_entropy_backward_bf16(const float* logits, std::int64_t ld, const std::int32_t* targets,
                                 const float* lse, std::int64_t rows, std::int64_t vocab,
                                 float scale, std::uint16_t* dlogits, std::int64_t ld_out,
                                 void* stream) {
  if (rows == 0) return;
  cross_entropy_backward_kernel<<<static_cast<unsigned>(rows), threads, 0, as_stream(stream)>>>(
      logits, ld, targets, lse, vocab, scale, dlogits, ld_out);
  TROUPE_CUDA_LAUNCHED();
}

void sum_losses(const float* losses, const std::int32_t* targets, std::int64_t rows, double* total,
                std::int64_t* labelled, void* stream) {
  sum_losses_kernel<<<1, 1024, 0, as_stream(stream)>>>(losses, targets, rows, total, labelled);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
