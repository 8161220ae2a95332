#include "runtime/layers/dense_ffn.hpp"

#include "kernels/cpu/linear.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

void check_gemm(troupe_status status, const troupe_error& error, const char* what) {
  if (status != TROUPE_STATUS_OK) fail("{}: GEMM failed: {}", what, error.message);
}

void dense_ffn::forward(const exec_context& context, const dense_ffn_weights& w,
                        std::int64_t micro_batch, const float* x, float* y, std::int64_t rows) {
  saved& s = saved_[micro_batch];
  s.x = x;
  s.rows = rows;
  const auto* ctx = context.abi();
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
