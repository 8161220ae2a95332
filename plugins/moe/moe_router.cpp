#include "plugins/moe/moe_router.hpp"

#include <algorithm>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

namespace troupe::plugin {

void node_limit::check(const model_shape& c) const {
  if (node_of.empty()) return;
  if (static_cast<std::int64_t>(node_of.size()) != c.n_routed_experts)
    throw std::invalid_argument(
        fmt::format("node-limited routing names the host of {} experts; the model has {}",
                    node_of.size(), c.n_routed_experts));
  std::map<std::int32_t, std::int64_t> per_node;
  for (std::int32_t n : node_of) {
    if (n < 0 || n >= 64)
      throw std::invalid_argument(
          fmt::format("node-limited routing: host {} is not in [0, 64)", n));
    ++per_node[n];
  }
  const std::int64_t k = c.num_experts_per_tok;
  if (max_nodes < 1)
    throw std::invalid_argument("node-limited routing needs max_nodes_per_token >= 1");
  if (max_nodes >= static_cast<std::int64_t>(per_node.size())) return;  // covers every host
  const std::int64_t fewest =
      std::min_element(per_node.begin(), per_node.end(), [](const auto& a, const auto& b) {
        return a.second < b.second;
      })->second;
  if (fewest * max_nodes < k ||
      std::max<std::int64_t>(1, k / max_nodes) > kernels::cpu::max_group_top)
    throw std::invalid_argument(fmt::format(
        "node-limited routing to {} of {} hosts cannot choose {} experts: a host holds as few as "
        "{} routed experts (every {} hosts must hold at least {}, and {}/{} at most {})",
        max_nodes, per_node.size(), k, fewest, max_nodes, k, k, max_nodes,
        kernels::cpu::max_group_top));
}

moe_router::moe_router(const model_shape& c, double balance_alpha, const node_limit& limit,
                       parameter_list& parameters)
    : hidden_(c.hidden_size), balance_alpha_(balance_alpha) {
  shape_ = {c.n_routed_experts,    c.n_group,        c.topk_group,
            c.num_experts_per_tok, c.norm_topk_prob, static_cast<float>(c.routed_scaling_factor)};
  limit.check(c);
  const std::int64_t nodes =
      limit.node_of.empty() ? 0 : *std::max_element(limit.node_of.begin(), limit.node_of.end()) + 1;
  if (!limit.node_of.empty() && limit.max_nodes < nodes) {
    // NOTES: the hosts become the groups, M of them kept, each scored by its best K/M choices.
    node_of_ = limit.node_of;
    shape_.groups = nodes;
    shape_.topk_groups = limit.max_nodes;
    shape_.group_top = std::max<std::int64_t>(1, shape_.topk / limit.max_nodes);
  }
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
    ops::router_forward(context, shape_on(context), logits.data(), weight_[bias_index_],
                        s->scores.data(), selected, gates, t);
    s->selected.assign_copy(context, selected, static_cast<std::size_t>(t * k));
    ops::count_selections(context, selected, t * k, e_count, counts);
    ops::balance_loss_forward(context, shape_on(context), s->scores.data(), selected, shape.batch,
                              shape.length, balance_alpha_, balance_loss);
    return TROUPE_STATUS_OK;
  });
}

kernels::cpu::router_shape moe_router::shape_on(const troupe_exec_context* context) {
  kernels::cpu::router_shape shape = shape_;
  if (node_of_.empty()) return shape;
  if (!on_gpu(context)) {
    shape.group_of = node_of_.data();
    return shape;
  }
  if (node_of_device_.empty() || node_of_on_.device_type != context->device.device_type ||
      node_of_on_.device_id != context->device.device_id) {
    node_of_device_.allocate(context, node_of_.size());
    ops::copy_from_host(context, node_of_device_.data(), node_of_.data(),
                        node_of_.size() * sizeof(std::int32_t));
    node_of_on_ = context->device;
  }
  shape.group_of = node_of_device_.data();
  return shape;
}

troupe_status moe_router::backward_input(const troupe_exec_context* context,
                                         std::int64_t micro_batch, const float* d_gates,
                                         float d_balance, float* dx, troupe_error* error) {
  saved_routing* s = saved_.for_input(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  return guarded(error, [&] {
    const std::int64_t t = s->shape.tokens(), e_count = shape_.experts, h = hidden_;
    s->d_logits.assign(context, static_cast<std::size_t>(t * e_count));
    ops::router_backward(context, shape_on(context), s->scores.data(), s->selected.data(), d_gates,
                         s->d_logits.data(), t);
    if (d_balance != 0.0f)
      ops::balance_loss_backward(context, shape_on(context), s->scores.data(), s->selected.data(),
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
