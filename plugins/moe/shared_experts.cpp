#include "plugins/moe/shared_experts.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/linear.hpp"
#include "kernels/cpu/swiglu.hpp"

namespace troupe::plugin {

using kernels::linear_backward;
using kernels::linear_forward;

shared_experts::shared_experts(const model_shape& c, parameter_list& parameters)
    : hidden_(c.hidden_size), inter_(c.moe_intermediate_size * c.n_shared_experts) {
  if (inter_ == 0) return;
  // Every backward path writes the gradients whole at the first backward after each zeroing
  // (backward_weight), so the runtime need not zero them.
  const std::uint32_t flags = TROUPE_PARAM_TRAINABLE | TROUPE_PARAM_GRAD_OVERWRITTEN;
  gate_ = parameters.add("mlp.shared_experts.gate_proj.weight", {inter_, hidden_},
                         TROUPE_INIT_NORMAL, 0.02f, flags);
  up_ = parameters.add("mlp.shared_experts.up_proj.weight", {inter_, hidden_}, TROUPE_INIT_NORMAL,
                       0.02f, flags);
  down_ = parameters.add("mlp.shared_experts.down_proj.weight", {hidden_, inter_},
                         TROUPE_INIT_NORMAL, 0.02f, flags);
}

void shared_experts::bind(std::span<float* const> weights, std::span<float* const> grads) {
  weight_ = weights;
  grad_ = grads;
  copies_.reset();
}

bool shared_experts::bf16_path(const troupe_exec_context* context) const {
  return on_gpu(context) && context->gemm != nullptr && context->gemm->name != nullptr &&
         std::strcmp(context->gemm->name, TROUPE_GEMM_CUBLASLT_BF16) == 0 &&
         context->struct_size >= offsetof(troupe_exec_context, parameter_version) +
                                     sizeof(context->parameter_version) &&
         context->parameter_version != nullptr && hidden_ % 8 == 0 && inter_ % 8 == 0;
}

void shared_experts::refresh_copies(const troupe_exec_context* context) {
  const std::int64_t matrix = inter_ * hidden_;
  if (copies_.unplaced()) {
    gate_up16_.allocate(context, static_cast<std::size_t>(2 * matrix));
    down16_.allocate(context, static_cast<std::size_t>(matrix));
    copies_.keep(context, {{weight_[gate_], gate_up16_.data(), matrix},
                           {weight_[up_], gate_up16_.data() + matrix, matrix},
                           {weight_[down_], down16_.data(), matrix}});
  }
  if (copies_.stale(context)) {
    ops::round_to_bf16(context, weight_[gate_], gate_up16_.data(), matrix);
    ops::round_to_bf16(context, weight_[up_], gate_up16_.data() + matrix, matrix);
    ops::round_to_bf16(context, weight_[down_], down16_.data(), matrix);
  }
}

ops::swiglu_bf16_weights shared_experts::bf16_weights() const {
  return {hidden_, inter_, gate_up16_.data(), down16_.data()};
}

troupe_status shared_experts::forward(const troupe_exec_context* context, std::int64_t micro_batch,
                                      const float* x, std::int64_t tokens, float* y,
                                      troupe_error* error) {
  if (!present())
    return guarded(error, [&] {
      ops::zero(context, y, tokens * hidden_);
      return TROUPE_STATUS_OK;
    });
  saved_block* s = saved_.start(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const troupe_status status = guarded(error, [&]() -> troupe_status {
    s->x = x;
    s->tokens = tokens;
    s->bf16 = bf16_path(context);
    if (s->bf16) {
      refresh_copies(context);
      ops::swiglu_block_forward_bf16(context, bf16_weights(), x, tokens, y, s->block);
      return TROUPE_STATUS_OK;
    }
    s->gate_up.allocate(context, static_cast<std::size_t>(tokens * 2 * inter_));
    TROUPE_TRY(linear_forward(context, x, hidden_, weight_[gate_], s->gate_up.data(), 2 * inter_,
                              tokens, hidden_, inter_, false, error));
    TROUPE_TRY(linear_forward(context, x, hidden_, weight_[up_], s->gate_up.data() + inter_,
                              2 * inter_, tokens, hidden_, inter_, false, error));
    buffer h;
    h.allocate(context, static_cast<std::size_t>(tokens * inter_));
    ops::swiglu_forward_fused(context, s->gate_up.data(), h.data(), tokens, inter_);
    return linear_forward(context, h.data(), inter_, weight_[down_], y, hidden_, tokens, inter_,
                          hidden_, false, error);
  });
  if (status != TROUPE_STATUS_OK) saved_.release(micro_batch);
  return status;
}

troupe_status shared_experts::backward_input(const troupe_exec_context* context,
                                             std::int64_t micro_batch, const float* dy, float* dx,
                                             troupe_error* error) {
  if (!present()) return TROUPE_STATUS_OK;
  saved_block* s = saved_.for_input(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  return guarded(error, [&]() -> troupe_status {
    const std::int64_t t = s->tokens;
    if (s->bf16) {
      refresh_copies(context);
      ops::swiglu_block_backward_input_bf16(context, bf16_weights(), dy, dx, s->block);
      saved_.input_done(micro_batch);
      return TROUPE_STATUS_OK;
    }
    s->hidden.allocate(context, static_cast<std::size_t>(t * inter_));
    ops::swiglu_forward_fused(context, s->gate_up.data(), s->hidden.data(), t, inter_);
    buffer dh;
    dh.allocate(context, static_cast<std::size_t>(t * inter_));
    TROUPE_TRY(linear_backward(context, dy, hidden_, nullptr, 0, weight_[down_], dh.data(), inter_,
                               nullptr, t, inter_, hidden_, error, false));
    s->d_gate_up.allocate(context, static_cast<std::size_t>(t * 2 * inter_));
    ops::swiglu_backward_fused(context, dh.data(), s->gate_up.data(), s->d_gate_up.data(), t,
                               inter_, false);
    TROUPE_TRY(linear_backward(context, s->d_gate_up.data(), 2 * inter_, nullptr, 0, weight_[gate_],
                               dx, hidden_, nullptr, t, hidden_, inter_, error));
    TROUPE_TRY(linear_backward(context, s->d_gate_up.data() + inter_, 2 * inter_, nullptr, 0,
                               weight_[up_], dx, hidden_, nullptr, t, hidden_, inter_, error));
    s->d_out.assign_copy(context, dy, static_cast<std::size_t>(t * hidden_));
    saved_.input_done(micro_batch);
    return TROUPE_STATUS_OK;
  });
}

troupe_status shared_experts::backward_weight(const troupe_exec_context* context,
                                              std::int64_t micro_batch, troupe_error* error) {
  if (!present()) return TROUPE_STATUS_OK;
  saved_block* s = saved_.for_weight(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const std::int64_t t = s->tokens;
  const bool overwrite = generations_.overwrite(context);
  const troupe_status status = guarded(error, [&]() -> troupe_status {
    if (s->bf16) {
      ops::swiglu_block_backward_weight_bf16(context, bf16_weights(), grad_[gate_], grad_[up_],
                                             grad_[down_], overwrite ? 0.0f : 1.0f, s->block);
      return TROUPE_STATUS_OK;
    }
    if (overwrite)  // the GEMMs below add: the gradients start from zeros
      for (const std::size_t parameter : {gate_, up_, down_})
        if (grad_[parameter] != nullptr)
          ops::zero_bytes(context, grad_[parameter],
                          static_cast<std::size_t>(hidden_ * inter_) * sizeof(float));
    TROUPE_TRY(linear_backward(context, s->d_out.data(), hidden_, s->hidden.data(), inter_,
                               weight_[down_], nullptr, 0, grad_[down_], t, inter_, hidden_,
                               error));
    TROUPE_TRY(linear_backward(context, s->d_gate_up.data(), 2 * inter_, s->x, hidden_,
                               weight_[gate_], nullptr, 0, grad_[gate_], t, hidden_, inter_,
                               error));
    return linear_backward(context, s->d_gate_up.data() + inter_, 2 * inter_, s->x, hidden_,
                           weight_[up_], nullptr, 0, grad_[up_], t, hidden_, inter_, error);
  });
  saved_.release(micro_batch);
  return status;
}

std::size_t shared_experts::saved_bytes() const {
  std::size_t bytes = 0;
  saved_.for_each([&](std::int64_t, const saved_block& s) {
    bytes += s.gate_up.bytes() + s.hidden.bytes() + s.d_gate_up.bytes() + s.d_out.bytes() +
             s.block.bytes();
  });
  return bytes;
}

}  // namespace troupe::plugin
