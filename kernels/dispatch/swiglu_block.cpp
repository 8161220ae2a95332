#include "kernels/dispatch/swiglu_block.hpp"

namespace troupe::kernels::ops {

void swiglu_block_forward_bf16(const troupe_exec_context* context, const swiglu_bf16_weights& w,
                               const float* x, std::int64_t tokens, float* y,
                               swiglu_bf16_saved& s) {
  const std::int64_t t = tokens, h = w.hidden, i = w.inter;
  s.tokens = t;
  s.x16.allocate(context, static_cast<std::size_t>(t * h));
  round_to_bf16(context, x, s.x16.data(), t * h);
  s.gate_up16.allocate(context, static_cast<std::size_t>(t * 2 * i));
  gemm_bf16(context, false, true, t, 2 * i, h, 1.0f, s.x16.data(), h, w.gate_up, h,
            s.gate_up16.data(), 2 * i);
  s.hidden16.allocate(context, static_cast<std::size_t>(t * i));
  swiglu_forward_fused_bf16(context, s.gate_up16.data(), s.hidden16.data(), t, i);
  gemm_bf16(context, false, true, t, h, i, 1.0f, s.hidden16.data(), i, w.down, i, 0.0f, y, h);
}

void swiglu_block_backward_input_bf16(const troupe_exec_context* context,
                                      const swiglu_bf16_weights& w, const float* dy, float* dx,
                                      swiglu_bf16_saved& s) {
  const std::int64_t t = s.tokens, h = w.hidden, i = w.inter;
  s.d_out16.allocate(context, static_cast<std::size_t>(t * h));
  round_to_bf16(context, dy, s.d_out16.data(), t * h);
  device_array<std::uint16_t> dh16;
  dh16.allocate(context, static_cast<std::size_t>(t * i));
  gemm_bf16(context, false, false, t, i, h, 1.0f, s.d_out16.data(), h, w.down, i, dh16.data(), i);
  s.d_gate_up16.allocate(context, static_cast<std::size_t>(t * 2 * i));
  swiglu_backward_fused_bf16(context, dh16.data(), s.gate_up16.data(), s.d_gate_up16.data(), t, i);
  gemm_bf16(context, false, false, t, h, 2 * i, 1.0f, s.d_gate_up16.data(), 2 * i, w.gate_up, h,
            1.0f, dx, h);
}

void swiglu_block_backward_weight_bf16(const troupe_exec_context* context,
                                       const swiglu_bf16_weights& w, float* d_gate, float* d_up,
                                       float* d_down, float beta, const swiglu_bf16_saved& s) {
  const std::int64_t t = s.tokens, h = w.hidden, i = w.inter;
  if (t == 0) {  // no products: an overwrite leaves zeros
    if (beta == 0.0f)
      for (float* gradient : {d_gate, d_up, d_down})
        if (gradient != nullptr)
          zero_bytes(context, gradient, static_cast<std::size_t>(h * i) * sizeof(float));
    return;
  }
  if (d_down != nullptr)
    gemm_bf16(context, true, false, h, i, t, 1.0f, s.d_out16.data(), h, s.hidden16.data(), i, beta,
              d_down, i);
  if (d_gate != nullptr)
    gemm_bf16(context, true, false, i, h, t, 1.0f, s.d_gate_up16.data(), 2 * i, s.x16.data(), h,
              beta, d_gate, h);
  if (d_up != nullptr)
    gemm_bf16(context, true, false, i, h, t, 1.0f, s.d_gate_up16.data() + i, 2 * i, s.x16.data(), h,
              beta, d_up, h);
}

}  // namespace troupe::kernels::ops
