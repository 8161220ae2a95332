#include "kernels/cpu/swiglu.hpp"

#include <cmath>

namespace troupe::kernels::cpu {

namespace {
inline float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}
}  // namespace

void swiglu_forward(const float* gate, const float* up, float* h, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

void swiglu_backward(const float* dh, const float* gate, const float* up, float* dgate, float* dup,
                     std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float s = sigmoid(gate[i]);
    const float silu = gate[i] * s;
    dgate[i] += dh[i] * up[i] * s * (1.0f + gate[i] * (1.0f - s));
    dup[i] += dh[i] * silu;
  }
}

void swiglu_forward_fused(const float* gate_up, float* h, std::int64_t rows, std::int64_t width) {
  for (std::int64_t r = 0; r < rows; ++r)
    swiglu_forward(gate_up + r * 2 * width, gate_up + r * 2 * width + width, h + r * width, width);
}

void swiglu_backward_fused(const float* dh, const float* gate_up, float* dgate_up,
                           std::int64_t rows, std::int64_t width) {
  for (std::int64_t r = 0; r < rows; ++r)
    swiglu_backward(dh + r * width, gate_up + r * 2 * width, gate_up + r * 2 * width + width,
                    dgate_up + r * 2 * width, dgate_up + r * 2 * width + width, width);
}

}  // namespace troupe::kernels::cpu
