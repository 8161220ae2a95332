#include "runtime/layers/dense_ffn.hpp"

#include <cstring>

#include "kernels/cpu/linear.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

void check_gemm(troupe_status status, const troupe_error& error, const char* what) {
  if (status != TROUPE_STATUS_OK) fail("{}: GEMM failed: {}", what, error.message);
}

bool dense_ffn::bf16_path(const troupe_exec_context* context) const {
  return kernels::on_gpu(context) && context->gemm != nullptr && context->gemm->name != nullptr &&
         std::strcmp(context->gemm->name, TROUPE_GEMM_CUBLASLT_BF16) == 0 && hidden_ % 8 == 0 &&
         inter_ % 8 == 0;
}

kernels::ops::swiglu_bf16_weights dense_ffn::round_weights(const troupe_exec_context* context,
                                                           const dense_ffn_weights& w) {
  // NOTES: rounded at every forward (0.1 ms for the medium config's 69 M weights): the block's
  // backward reads the copies of its own step, and the runtime's parameters change only between
  // steps.
  const std::int64_t matrix = hidden_ * inter_;
  if (gate_up16_.size() != static_cast<std::size_t>(2 * matrix)) {
    gate_up16_.allocate(context, static_cast<std::size_t>(2 * matrix));
    down16_.allocate(context, static_cast<std::size_t>(matrix));
  }
  kernels::ops::round_to_bf16(context, w.gate, gate_up16_.data(), matrix);
  kernels::ops::round_to_bf16(context, w.up, gate_up16_.data() + matrix, matrix);
  kernels::ops::round_to_bf16(context, w.down, down16_.data(), matrix);
  return {hidden_, inter_, gate_up16_.data(), down16_.data()};
}

void dense_ffn::forward(const exec_context& context, const dense_ffn_weights& w,
                        std::int64_t micro_batch, const float* x, float* y, std::int64_t rows) {
  saved& s = saved_[micro_batch];
  s.x = x;
  s.rows = rows;
  const auto* ctx = context.abi();
  s.bf16 = bf16_path(ctx);
  if (s.bf16) {
    kernels::ops::swiglu_block_forward_bf16(ctx, round_weights(ctx, w), x, rows, y, s.block);
    return;
  }
  // Written whole before they are read: no zero fill (on the GPU 1.1 GB for the medium config).
  s.gate_up.allocate(ctx, static_cast<std::size_t>(rows * 2 * inter_));
  s.h.allocate(ctx, static_cast<std::size_t>(rows * inter_));
  troupe_error error{};
  check_gemm(kernels::linear_forward(ctx, x, hidden_, w.gate, s.gate_up.data(), 2 * inter_, rows,
                                     hidden_, inter_, false, &error),
             error, "dense FFN gate");
  check_gemm(kernels::linear_forward(ctx, x, hidden_, w.up, s.gate_up.data() + inter_, 2 * inter_,
                                     rows, hidden_, inter_, false, &error),
             error, "dense FFN up");
  kernels::ops::swiglu_forward_fused(ctx, s.gate_up.data(), s.h.data(), rows, inter_);
  check_gemm(kernels::linear_forward(ctx, s.h.data(), inter_, w.down, y, hidden_, rows, inter_,
                                     hidden_, false, &error),
             error, "dense FFN down");
}

void dense_ffn::backward(const exec_context& context, const dense_ffn_weights& w,
                         std::int64_t micro_batch, troupe_backward_part part, const float* dy,
                         float* dx) {
  auto it = saved_.find(micro_batch);
  if (it == saved_.end()) fail("dense FFN: no forward saved for micro-batch {}", micro_batch);
  saved& s = it->second;
  troupe_error error{};
  const auto* ctx = context.abi();
  const std::int64_t rows = s.rows;
  if (s.bf16) {
    const kernels::ops::swiglu_bf16_weights copies{hidden_, inter_, gate_up16_.data(),
                                                   down16_.data()};
    if (part != TROUPE_BACKWARD_WEIGHT)
      kernels::ops::swiglu_block_backward_input_bf16(ctx, copies, dy, dx, s.block);
    if (part != TROUPE_BACKWARD_INPUT) {
      kernels::ops::swiglu_block_backward_weight_bf16(ctx, copies, w.d_gate, w.d_up, w.d_down, 1.0f,
                                                      s.block);
      saved_.erase(it);
    }
    return;
  }
  if (part != TROUPE_BACKWARD_WEIGHT) {
    s.dy.assign_copy(ctx, dy, static_cast<std::size_t>(rows * hidden_));
    kernels::buffer dh;
    dh.allocate(ctx, static_cast<std::size_t>(rows * inter_));
    check_gemm(kernels::linear_backward(ctx, dy, hidden_, nullptr, 0, w.down, dh.data(), inter_,
                                        nullptr, rows, inter_, hidden_, &error, false),
               error, "dense FFN down backward");
    s.d_gate_up.allocate(ctx, static_cast<std::size_t>(rows * 2 * inter_));
    kernels::ops::swiglu_backward_fused(ctx, dh.data(), s.gate_up.data(), s.d_gate_up.data(), rows,
                                        inter_, false);
    check_gemm(kernels::linear_backward(ctx, s.d_gate_up.data(), 2 * inter_, nullptr, 0, w.gate, dx,
                                        hidden_, nullptr, rows, hidden_, inter_, &error),
               error, "dense FFN gate backward");
    check_gemm(kernels::linear_backward(ctx, s.d_gate_up.data() + inter_, 2 * inter_, nullptr, 0,
                                        w.up, dx, hidden_, nullptr, rows, hidden_, inter_, &error),
               error, "dense FFN up backward");
  }
  if (part != TROUPE_BACKWARD_INPUT) {
    check_gemm(kernels::linear_backward(ctx, s.dy.data(), hidden_, s.h.data(), inter_, w.down,
                                        nullptr, 0, w.d_down, rows, inter_, hidden_, &error),
               error, "dense FFN down weight gradient");
    check_gemm(kernels::linear_backward(ctx, s.d_gate_up.data(), 2 * inter_, s.x, hidden_, w.gate,
                                        nullptr, 0, w.d_gate, rows, hidden_, inter_, &error),
               error, "dense FFN gate weight gradient");
    check_gemm(kernels::linear_backward(ctx, s.d_gate_up.data() + inter_, 2 * inter_, s.x, hidden_,
                                        w.up, nullptr, 0, w.d_up, rows, hidden_, inter_, &error),
               error, "dense FFN up weight gradient");
    saved_.erase(it);
  }
}

}  // namespace troupe
