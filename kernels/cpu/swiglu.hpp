#pragma once

// SwiGLU's gate: h = silu(gate) * up, elementwise over `count` values; backward accumulates.

#include <cstdint>

namespace troupe::kernels::cpu {

void swiglu_forward(const float* gate, const float* up, float* h, std::int64_t count);

/// dgate += dh * up * silu'(gate), dup += dh * silu(gate).
void swiglu_backward(const float* dh, const float* gate, const float* up, float* dgate, float* dup,
                     std::int64_t count);

/// Strided form for a fused [rows, 2*width] gate|up buffer: h[rows, width].
void swiglu_forward_fused(const float* gate_up, float* h, std::int64_t rows, std::int64_t width);
void swiglu_backward_fused(const float* dh, const float* gate_up, float* dgate_up,
                           std::int64_t rows, std::int64_t width);

}  // namespace troupe::kernels::cpu
