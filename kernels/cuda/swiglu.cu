#include <algorithm>

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

// NOTES: row r, column c of a [rows, width] SwiGLU reads gate[r * ld + c] and up[r * ld + c]
// (ld = width for separate buffers, 2 * width for a fused gate|up one, up = gate + width) and
// writes h[r * width + c]. Columns by the grid's x, rows by its y: a flat index split into
// (row, column) with a 64-bit division per element made these passes bound by instructions.
__global__ void swiglu_forward_kernel(const float* gate, const float* up, float* h,
                                      std::int64_t rows, std::int64_t width, std::int64_t ld) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const std::int64_t at = r * ld + c;
    const float g = gate[at];
    h[r * width + c] = g * sigmoid(g) * up[at];
  }
}

__global__ void swiglu_backward_kernel(const float* dh, const float* gate, const float* up,
                                       float* dgate, float* dup, std::int64_t rows,
                                       std::int64_t width, std::int64_t ld, bool accumulate) {
  const std::int64_t c = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const std::int64_t at = r * ld + c;
    const float g = gate[at], s = sigmoid(g), d = dh[r * width + c];
    const float d_gate = d * up[at] * s * (1.0f + g * (1.0f - s)), d_up = d * g * s;
    dgate[at] = accumulate ? dgate[at] + d_gate : d_gate;
    dup[at] = accumulate ? dup[at] + d_up : d_up;
  }
}

/// Columns by x, rows by y (at most 65535 blocks; each walks rows with the grid's stride).
dim3 grid_of(std::int64_t rows, std::int64_t width) {
  return dim3(blocks_for(width, threads),
              static_cast<unsigned>(std::min<std::int64_t>(rows, 65535)));
}

}  // namespace

void swiglu_forward(const float* gate, const float* up, float* h, std::int64_t count,
                    void* stream) {
  if (count == 0) return;
  swiglu_forward_kernel<<<grid_of(1, count), threads, 0, as_stream(stream)>>>(gate, up, h, 1, count,
                                                                              count);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward(const float* dh, const float* gate, const float* up, float* dgate, float* dup,
                     std::int64_t count, void* stream) {
  if (count == 0) return;
  swiglu_backward_kernel<<<grid_of(1, count), threads, 0, as_stream(stream)>>>(
      dh, gate, up, dgate, dup, 1, count, count, true);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_forward_fused(const float* gate_up, float* h, std::int64_t rows, std::int64_t width,
                          void* stream) {
  if (rows * width == 0) return;
  swiglu_forward_kernel<<<grid_of(rows, width), threads, 0, as_stream(stream)>>>(
      gate_up, gate_up + width, h, rows, width, 2 * width);
  TROUPE_CUDA_LAUNCHED();
}

void swiglu_backward_fused(const float* dh, const float* gate_up, float* dgate_up,
                           std::int64_t rows, std::int64_t width, void* stream, bool accumulate) {
  if (rows * width == 0) return;
  swiglu_backward_kernel<<<grid_of(rows, width), threads, 0, as_stream(stream)>>>(
      dh, gate_up, gate_up + width, dgate_up, dgate_up + width, rows, width, 2 * width, accumulate);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
