#pragma once

// SwiGLU's gate on a CUDA device, the same contract as kernels/cpu/swiglu.hpp:
//   h = silu(gate) * up;  backward accumulates dgate += dh * up * silu'(gate), dup += dh * silu.
// Device pointers; `stream` is a cudaStream_t.

#include <cstdint>

namespace troupe::kernels::cuda {

void swiglu_forward(const float* gate, const float* up, float* h, std::int64_t count, void* stream);
void swiglu_backward(const float* dh, const float* gate, const float* up, float* dgate, float* dup,
                     std::int64_t count, void* stream);

/// A fused [rows, 2*width] gate|up buffer (one GEMM made both): h[rows, width].
void swiglu_forward_fused(const float* gate_up, float* h, std::int64_t rows, std::int64_t width,
                          void* stream);
/// dgate_up += (or =, without `accumulate`) the gradient of both halves.
void swiglu_backward_fused(const float* dh, const float* gate_up, float* dgate_up,
                           std::int64_t rows, std::int64_t width, void* stream,
                           bool accumulate = true);

/// The same two passes with their results rounded to BF16 (bits, round to nearest even) for the
/// grouped GEMMs to read as they are (grouped_gemm.hpp's pre-rounded operands): h[rows, width]
/// and dgate_up[rows, 2*width] (written, never added to). The width must be a multiple of 4, the
/// f32 buffers 16-byte and the BF16 ones 8-byte aligned.
void swiglu_forward_fused_bf16(const float* gate_up, std::uint16_t* h, std::int64_t rows,
                               std::int64_t width, void* stream);
void swiglu_backward_fused_bf16(const float* dh, const float* gate_up, std::uint16_t* dgate_up,
                                std::int64_t rows, std::int64_t width, void* stream);

/// The same from BF16 inputs (bits: gate_up and dh as the grouped GEMMs' BF16 outputs write
/// them), every buffer 8-byte aligned.
void swiglu_forward_fused_bf16(const std::uint16_t* gate_up, std::uint16_t* h, std::int64_t rows,
                               std::int64_t width, void* stream);
void swiglu_backward_fused_bf16(const std::uint16_t* dh, const std::uint16_t* gate_up,
                                std::uint16_t* dgate_up, std::int64_t rows, std::int64_t width,
                                void* stream);

}  // namespace troupe::kernels::cuda
