#include "kernels/cpu/swiglu.hpp"

#include "kernels/cpu/vector_math.hpp"

namespace troupe::kernels::cpu {

// NOTES: libm's expf is a call per element and kept these loops scalar (6% of a small-512 step in
// expf and the loops around it); vector_exp vectorises, and each loop is cloned for AVX-512 and
// AVX2.

TROUPE_WIDE_CLONES
void swiglu_forward(const float* gate, const float* up, float* h, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) h[i] = gate[i] * vector_sigmoid(gate[i]) * up[i];
}

TROUPE_WIDE_CLONES
void swiglu_backward(const float* dh, const float* gate, const float* up, float* dgate, float* dup,
                     std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) {
    const float s = vector_sigmoid(gate[i]);
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
