#include "plugins/moe/moe_router.hpp"

namespace troupe::plugin {

moe_router::moe_router(const model_shape& c, double balance_alpha, parameter_list& parameters)
    : hidden_(c.hidden_size), balance_alpha_(balance_alpha) {
  shape_ = {c.n_routed_experts,    c.n_group,        c.topk_group,
            c.num_experts_per_tok, c.norm_topk_prob, static_cast<float>(c.routed_scaling_factor)};
  weight_index_ =
      parameters.add("mlp.gate.weight", {shape_.experts, hidden_}, TROUPE_INIT_NORMAL, 0.02f);
  bias_index_ =
      parameters.add("mlp.gate.e_score_correction_bias", {shape_.experts}, TROUPE_INIT_ZEROS, 0.0f,
                     TROUPE_PARAM_BUFFER | TROUPE_PARAM_ROUTER_BIAS);
}

void moe_router::bind(std::span<float* const> weights, std::span<float* const> grads) {
  weight_ = weights;
  grad_ = grads;
}

troupe_status moe_router::forward(const troupe_exec_context* context, std::int64_t micro_batch,
                                  const float* x, activation_shape shape, std::int32_t* selected,
                                  float* gates, std::int64_t* counts, float* balance_loss,
                                  troupe_error* error) {
  saved_routing* s = saved_.start(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  return guarded(error, [&] {
    const std::int64_t t = shape.tokens(), e_count = shape_.experts, k = shape_.topk, h = hidden_;
    s->x = x;
    s->shape = shape;
    buffer logits;
    logits.allocate(context, static_cast<std::size_t>(t * e_count));
    ops::gemm_f32(context, false, true, t, e_count, h, 1.0f, x, h, weight_[weight_index_], h, 0.0f,
                  logits.data(), e_count);
    s->scores.allocate(context, static_cast<std::size_t>(t * e_count));
    ops::router_forward(context, shape_, logits.data(), weight_[bias_index_], s->scores.data(),
                        selected, gates, t);
    s->selected.assign_copy(context, selected, static_cast<std::size_t>(t * k));
    ops::count_selections(context, selected, t * k, e_count, counts);
    ops::balance_loss_forward(context, shape_, s->scores.data(), selected, shape.batch,
                              shape.length, balance_alpha_, balance_loss);
    return TROUPE_STATUS_OK;
  });
}

troupe_status moe_router::backward_input(const troupe_exec_context* context,
                                         std::int64_t micro_batch, const float* d_gates,
                                         float d_balance, float* dx, troupe_error* error) {
  saved_routing* s = saved_.for_input(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  return guarded(error, [&] {
    const std::int64_t t = s->shape.tokens(), e_count = shape_.experts, h = hidden_;
    s->d_logits.assign(context, static_cast<std::size_t>(t * e_count));
    ops::router_backward(context, shape_, s->scores.data(), s->selected.data(), d_gates,
                         s->d_logits.data(), t);
    if (d_balance != 0.0f)
      ops::balance_loss_backward(context, shape_, s->scores.data(), s->selected.data(),
                                 s->shape.batch, s->shape.length, balance_alpha_, d_balance,
                                 s->d_logits.data());
    ops::gemm_f32(context, false, false, t, h, e_count, 1.0f, s->d_logits.data(), e_count,
                  weight_[weight_index_], h, 1.0f, dx, h);
    saved_.input_done(micro_batch);
    return TROUPE_STATUS_OK;
  });
}

troupe_status moe_router::backward_weight(const troupe_exec_context* context,
                                          std::int64_t micro_batch, troupe_error* error) {
  saved_routing* s = saved_.for_weight(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const std::int64_t t = s->shape.tokens(), e_count = shape_.experts, h = hidden_;
  const troupe_status status = guarded(error, [&] {
    if (grad_[weight_index_] != nullptr)
      ops::gemm_f32(context, true, false, e_count, h, t, 1.0f, s->d_logits.data(), e_count, s->x, h,
                    1.0f, grad_[weight_index_], h);
    return TROUPE_STATUS_OK;
  });
  saved_.release(micro_batch);
  return status;
}

std::size_t moe_router::saved_bytes() const {
  std::size_t bytes = 0;
  saved_.for_each([&](std::int64_t, const saved_routing& s) {
    bytes += s.scores.bytes() + s.d_logits.bytes() + s.selected.bytes();
  });
  return bytes;
}

}  // namespace troupe::plugin
