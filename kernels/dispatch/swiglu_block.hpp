#pragma once

// The SwiGLU feed-forward block on BF16 operands, for the layers that run it whole on one device
// (the MoE layer's shared experts, the dense FFN of the first layers):
//   y = down(silu(gate x) * up x)
// as an explicit forward and backward pair over what forward keeps (swiglu_bf16_saved). Every
// GEMM operand is BF16 from its producer: the input rounded once (Fprop and Wgrad read it),
// SwiGLU's output and gradient rounded by SwiGLU, the output gradient rounded once, the GEMMs'
// outputs that feed SwiGLU rounded by the GEMMs' epilogues; the weights are BF16 copies the
// caller keeps ([gate; up] stacked [2I, H] and down [H, I]), so gate and up run as one GEMM each
// way. cuBLASLt's BF16 GEMMs with FP32 accumulation (ops::gemm_bf16): GPU contexts only.

#include <cstddef>
#include <cstdint>

#include "kernels/dispatch/device_ops.hpp"

namespace troupe::kernels::ops {

/// What forward keeps for backward, and what backward_input keeps for backward_weight.
struct swiglu_bf16_saved {
  std::int64_t tokens = 0;
  /// [T, 2I] pre-activations (the GEMM's output rounded), the input, SwiGLU's output, the
  /// pre-activations' gradient and the output gradient.
  device_array<std::uint16_t> gate_up16, x16, hidden16, d_gate_up16, d_out16;

  std::size_t bytes() const {
    return gate_up16.bytes() + x16.bytes() + hidden16.bytes() + d_gate_up16.bytes() +
           d_out16.bytes();
  }
};

/// The block's shape and its weights' BF16 copies.
struct swiglu_bf16_weights {
  std::int64_t hidden = 0, inter = 0;
  const std::uint16_t* gate_up = nullptr;  ///< [2I, H]: gate's rows above up's
  const std::uint16_t* down = nullptr;     ///< [H, I]
};

/// y (overwritten) from x [tokens, H]; keeps the rounded input, the pre-activations and SwiGLU's
/// output in `s`.
void swiglu_block_forward_bf16(const troupe_exec_context* context, const swiglu_bf16_weights& w,
                               const float* x, std::int64_t tokens, float* y, swiglu_bf16_saved& s);

/// dx += dL/dx for dy; keeps the rounded output gradient and the pre-activations' gradient in `s`
/// for the weight part.
void swiglu_block_backward_input_bf16(const troupe_exec_context* context,
                                      const swiglu_bf16_weights& w, const float* dy, float* dx,
                                      swiglu_bf16_saved& s);

/// The weight gradients d_gate, d_up [I, H] and d_down [H, I] (any may be null: skipped) =
/// beta * themselves + this micro-batch's products: beta 0 overwrites them (with zeros where
/// there are no tokens), 1 adds.
void swiglu_block_backward_weight_bf16(const troupe_exec_context* context,
                                       const swiglu_bf16_weights& w, float* d_gate, float* d_up,
                                       float* d_down, float beta, const swiglu_bf16_saved& s);

}  // namespace troupe::kernels::ops
