#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/swiglu.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

// NOTES: expf, not __expf: the fast intrinsic's error (2 ulp + range reduction) shows in the FP32
// parity tests against the CPU, and these kernels are bound by memory, not by the exponential.
__device__ inline float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

// Element i of row r sits at gate[r * ld + c], up[r * ld + c], h[r * width + c] with c = i %
// width: ld = width for separate buffers, 2 * width for a fused gate|up one (up = gate + width).
__global__ void swiglu_forward_kernel(const float* gate, const float* up, float* h,
                                      std::int64_t count, std::int64_t width, std::int64_t ld) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const std::int64_t at = (i / width) * ld + i % width;
  const float g = gate[at];
  h[i] = g * sigmoid(g) * up[at];
}

__global__ void swiglu_backward_kernel(const float* dh, const float* gate, const float* up,
                                       float* dgate, float* dup, std::int64_t count,
                                       std::int64_t width, std::int64_t ld, bool accumulate) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const std::int64_t at = (i / width) * ld + i % width;
  const float g = gate[at], s = sigmoid(g);
  const float d_gate = dh[i] * up[at] * s * (1.0f + g * (1.0f - s)), d_up = dh[i] * g * s;
  dgate[at] = accumulate ? dgate[at] + d_gate : d_gate;
  dup[at] = accumulate ? dup[at] + d_up : d_up;
}

}  // namespace

void swiglu_forward(const float* gate, const float* up, float* h, std::int64_t count,
                    void* stream) {
  if (count == 0) return;
  swiglu_forward_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(
      gate, up, h, count, count, count);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward(const float* dh, const float* gate, const float* up, float* dgate, float* dup,
                     std::int64_t count, void* stream) {
  if (count == 0) return;
  swiglu_backward_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(
      dh, gate, up, dgate, dup, count, count, count, true);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_forward_fused(const float* gate_up, float* h, std::int64_t rows, std::int64_t width,
                          void* stream) {
  if (rows * width == 0) return;
  swiglu_forward_kernel<<<blocks_for(rows * width, threads), threads, 0, as_stream(stream)>>>(
      gate_up, gate_up + width, h, rows * width, width, 2 * width);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward_fused(const float* dh, const float* gate_up, float* dgate_up,
                           std::int64_t rows, std::int64_t width, void* stream, bool accumulate) {
  if (rows * width == 0) return;
  swiglu_backward_kernel<<<blocks_for(rows * width, threads), threads, 0, as_stream(stream)>>>(
      dh, gate_up, gate_up + width, dgate_up, dgate_up + width, rows * width, width, 2 * width,
      accumulate);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
