#include "plugins/moe/moe_router.hpp"

#include "kernels/cpu/gemm.hpp"

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
    std::vector<float> logits(static_cast<std::size_t>(t * e_count));
    kernels::cpu::sgemm_on_pool(context->pool, {false, true, t, e_count, h, h, h, e_count}, 1.0f, x,
                                weight_[weight_index_], 0.0f, logits.data());
    s->scores.assign(static_cast<std::size_t>(t * e_count), 0.0f);
    parallel_for(context, t, 32, [&](std::int64_t begin, std::int64_t end) {
      kernels::cpu::router_forward(shape_, logits.data() + begin * e_count, weight_[bias_index_],
                                   s->scores.data() + begin * e_count, selected + begin * k,
                                   gates + begin * k, end - begin);
    });
    s->selected.assign(selected, selected + t * k);
    std::fill(counts, counts + e_count, 0);
    kernels::cpu::count_selections(selected, t * k, counts);
    *balance_loss = static_cast<float>(kernels::cpu::balance_loss_forward(
        shape_, s->scores.data(), selected, shape.batch, shape.length, balance_alpha_));
    return TROUPE_STATUS_OK;
  });
}

troupe_status moe_router::backward_input(const troupe_exec_context* context,
                                         std::int64_t micro_batch, const float* d_gates,
                                         float d_balance, float* dx, troupe_error* error) {
  saved_routing* s = saved_.for_input(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  return guarded(error, [&] {
    const std::int64_t t = s->shape.tokens(), e_count = shape_.experts, k = shape_.topk,
                       h = hidden_;
    s->d_logits.assign(static_cast<std::size_t>(t * e_count), 0.0f);
    parallel_for(context, t, 32, [&](std::int64_t begin, std::int64_t end) {
      kernels::cpu::router_backward(shape_, s->scores.data() + begin * e_count,
                                    s->selected.data() + begin * k, d_gates + begin * k,
                                    s->d_logits.data() + begin * e_count, end - begin);
    });
    if (d_balance != 0.0f)
      kernels::cpu::balance_loss_backward(shape_, s->scores.data(), s->selected.data(),
                                          s->shape.batch, s->shape.length, balance_alpha_,
                                          d_balance, s->d_logits.data());
    kernels::cpu::sgemm_on_pool(context->pool, {false, false, t, h, e_count, e_count, h, h}, 1.0f,
                                s->d_logits.data(), weight_[weight_index_], 1.0f, dx);
    saved_.input_done(micro_batch);
    return TROUPE_STATUS_OK;
  });
}

troupe_status moe_router::backward_weight(const troupe_exec_context* context,
                                          std::int64_t micro_batch, troupe_error* error) {
  saved_routing* s = saved_.for_weight(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const std::int64_t t = s->shape.tokens(), e_count = shape_.experts, h = hidden_;
  if (grad_[weight_index_] != nullptr)
    kernels::cpu::sgemm_on_pool(context->pool, {true, false, e_count, h, t, e_count, h, h}, 1.0f,
                                s->d_logits.data(), s->x, 1.0f, grad_[weight_index_]);
  saved_.release(micro_batch);
  return TROUPE_STATUS_OK;
}

std::size_t moe_router::saved_bytes() const {
  std::size_t bytes = 0;
  saved_.for_each([&](std::int64_t, const saved_routing& s) {
    bytes += (s.scores.size() + s.d_logits.size()) * sizeof(float) +
             s.selected.size() * sizeof(std::int32_t);
  });
  return bytes;
}

}  // namespace troupe::plugin
