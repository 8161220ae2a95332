#pragma once

// DeepSeek-V3's auxiliary-loss-free, group-limited router and its sequence-wise balance loss.
//   scores  = sigmoid(logits)                         (FP32)
//   choice  = scores + bias                           (the bias steers selection only)
//   group   = sum of the top-2 choice values in each of n_group groups
//   keep the topk_group best groups, mask the other experts with -inf, take the top-k of choice
// Node-limited routing (DeepSeek-V3's M nodes per token) is the same rule with the hosts as the
// groups: `group_of` names each expert's host, topk_groups = M, and a host's score sums its
// top K/M choice values.
//   gates   = scores[selected] / (sum of them + 1e-20) * routed_scaling_factor  (when normalized)
// No token is ever dropped. Selected experts are listed in increasing expert order.

#include <cstdint>

namespace troupe::kernels::cpu {

struct router_shape {
  std::int64_t experts = 0;
  std::int64_t groups = 1;
  std::int64_t topk_groups = 1;
  std::int64_t topk = 1;
  bool normalize = true;
  float scaling = 1.0f;
  /// Each expert's group (on the device that routes); null: `groups` runs of consecutive experts.
  const std::int32_t* group_of = nullptr;
  /// Choice values a group's score sums: its best `group_top` (DeepSeek-V3's groups: 2).
  std::int64_t group_top = 2;
};

/// The largest group_top the routers take.
inline constexpr std::int64_t max_group_top = 16;

/// For `tokens` rows of logits[experts]: scores (sigmoid), selected[topk] (expert ids, ascending)
/// and gates[topk].
void router_forward(const router_shape& shape, const float* logits, const float* bias,
                    float* scores, std::int32_t* selected, float* gates, std::int64_t tokens);

/// d_logits += dL/dlogits through the gates (the selection itself has no gradient).
void router_backward(const router_shape& shape, const float* scores, const std::int32_t* selected,
                     const float* d_gates, float* d_logits, std::int64_t tokens);

/// Sequence-wise balance loss averaged over `sequences` sequences of `length` tokens:
///   L = alpha * sum_i f_i P_i,  f_i = E/(K*length) * count of the sequence's tokens routed to i,
///   P_i = mean over the sequence of scores_i / sum_j scores_j.
double balance_loss_forward(const router_shape& shape, const float* scores,
                            const std::int32_t* selected, std::int64_t sequences,
                            std::int64_t length, double alpha);

/// d_logits += d_loss * dL/dlogits (f_i is a count: no gradient flows through it).
void balance_loss_backward(const router_shape& shape, const float* scores,
                           const std::int32_t* selected, std::int64_t sequences,
                           std::int64_t length, double alpha, float d_loss, float* d_logits);

/// counts[e] += number of (token, slot) pairs routed to expert e.
void count_selections(const std::int32_t* selected, std::int64_t pairs, std::int64_t* counts);

}  // namespace troupe::kernels::cpu
