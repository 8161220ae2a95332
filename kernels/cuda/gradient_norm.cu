#include "kernels/cuda/gradient_norm.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;
constexpr int blocks_per_tensor = 64;

// partial[tensor * blocks_per_tensor + block]: the block's strided share of one tensor.
// NOTES: four float4s in flight per thread and step where the tensor is 16-byte aligned: one
// float per thread and step left the 64 blocks of a large tensor (an embedding of 67 M) latency
// bound, the last of a step's 7 G gradient elements to be summed.
constexpr int unroll = 4;
__global__ void partial_kernel(const gradient_tensor* tensors, double* partial) {
  __shared__ double shared[32];
  const gradient_tensor t = tensors[blockIdx.y];
  if (t.squares != nullptr) {  // summed where it was written: the first block takes the sum
    if (threadIdx.x == 0)
      partial[blockIdx.y * blocks_per_tensor + blockIdx.x] = blockIdx.x == 0 ? *t.squares : 0.0;
    return;
  }
  double sum = 0.0;
  std::int64_t scalar_from = 0;
  if (aligned(t.data, 16)) {
    const auto* quads = reinterpret_cast<const float4*>(t.data);
    const std::int64_t count = t.count / 4;
    const std::int64_t stride = static_cast<std::int64_t>(blocks_per_tensor) * threads;
    std::int64_t i = blockIdx.x * static_cast<std::int64_t>(threads) + threadIdx.x;
    for (; i + (unroll - 1) * stride < count; i += unroll * stride) {
      float4 g[unroll];
#pragma unroll
      for (int u = 0; u < unroll; ++u) g[u] = quads[i + u * stride];
#pragma unroll
      for (int u = 0; u < unroll; ++u)
        sum += static_cast<double>(g[u].x) * g[u].x + static_cast<double>(g[u].y) * g[u].y +
               static_cast<double>(g[u].z) * g[u].z + static_cast<double>(g[u].w) * g[u].w;
    }
    for (; i < count; i += stride) {
      const float4 g = quads[i];
      sum += static_cast<double>(g.x) * g.x + static_cast<double>(g.y) * g.y +
             static_cast<double>(g.z) * g.z + static_cast<double>(g.w) * g.w;
    }
    scalar_from = count * 4;
  }
  for (std::int64_t i = scalar_from + blockIdx.x * static_cast<std::int64_t>(threads) + threadIdx.x;
       i < t.count; i += static_cast<std::int64_t>(blocks_per_tensor) * threads) {
    const double g = t.data[i];
    sum += g * g;
  }
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) partial[blockIdx.y * blocks_per_tensor + blockIdx.x] = sum;
}

__global__ void total_kernel(const double* partial, std::int64_t count, double* norm_squared) {
  __shared__ double shared[32];
  double sum = 0.0;
  for (std::int64_t i = threadIdx.x; i < count; i += blockDim.x) sum += partial[i];
  sum = block_sum(sum, shared);
  if (threadIdx.x == 0) *norm_squared = sum;
}

// sums[t] = the partials of tensor t in block order, one thread per tensor.
__global__ void per_tensor_kernel(const double* partial, std::int64_t count, double* sums) {
  const std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (t >= count) return;
  double sum = 0.0;
  for (int b = 0; b < blocks_per_tensor; ++b) sum += partial[t * blocks_per_tensor + b];
  sums[t] = sum;
}

__global__ void clip_kernel(const double* norm_squared, double clip, float* scale) {
  const double norm = sqrt(*norm_squared);
  *scale = clip > 0.0 && norm > clip ? static_cast<float>(clip / (norm + 1e-6)) : 1.0f;
}

}  // namespace

std::size_t gradient_norm_scratch_bytes(std::int64_t tensors) {
  return static_cast<std::size_t>(tensors * blocks_per_tensor) * sizeof(double);
}

void gradient_norm_squared(const gradient_tensor* tensors, std::int64_t count, double* norm_squared,
                           void* scratch, std::size_t scratch_bytes, void* stream) {
  require(count <= 65535, "gradient_norm_squared", "more than 65,535 tensors in one launch");
  require(scratch_bytes >= gradient_norm_scratch_bytes(count), "gradient_norm_squared",
          "scratch smaller than gradient_norm_scratch_bytes");
  auto* partial = static_cast<double*>(scratch);
  if (count > 0) {
    partial_kernel<<<dim3(blocks_per_tensor, static_cast<unsigned>(count)), threads, 0,
                     as_stream(stream)>>>(tensors, partial);
    TROUPE_CUDA_LAUNCHED();
  }
  total_kernel<<<1, 1024, 0, as_stream(stream)>>>(partial, count * blocks_per_tensor, norm_squared);
  TROUPE_CUDA_LAUNCHED();
}

void gradient_sums(const gradient_tensor* tensors, std::int64_t count, double* sums, void* scratch,
                   std::size_t scratch_bytes, void* stream) {
  require(count <= 65535, "gradient_sums", "more than 65,535 tensors in one launch");
  require(scratch_bytes >= gradient_norm_scratch_bytes(count), "gradient_sums",
          "scratch smaller than gradient_norm_scratch_bytes");
  if (count == 0) return;
  auto* partial = static_cast<double*>(scratch);
  partial_kernel<<<dim3(blocks_per_tensor, static_cast<unsigned>(count)), threads, 0,
                   as_stream(stream)>>>(tensors, partial);
  TROUPE_CUDA_LAUNCHED();
  per_tensor_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(partial, count,
                                                                                   sums);
  TROUPE_CUDA_LAUNCHED();
}

void clip_scale(const double* norm_squared, double clip, float* scale, void* stream) {
  clip_kernel<<<1, 1, 0, as_stream(stream)>>>(norm_squared, clip, scale);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
