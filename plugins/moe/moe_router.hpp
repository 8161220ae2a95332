#pragma once

// The router of a DeepSeekMoE layer (kernels/cpu/router.hpp), in FP32 like DeepSeek-V3's gate:
// logits = x W_gate^T, then sigmoid affinities, biased group-limited top-k selection and gates.
// It also counts the tokens routed to each expert (for the bias balancer) and computes the
// sequence-wise balance loss. Runs on the exec context's device (plugins/common/device_ops.hpp);
// selected, gates, counts and the balance loss live there too.

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cpu/router.hpp"
#include "plugins/common/device_ops.hpp"
#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"
#include "plugins/common/split_backward.hpp"

namespace troupe::plugin {

/// Node-limited routing (DeepSeek-V3 §2.1.2): a token's experts lie on at most `max_nodes`
/// hosts, those with the highest sums of their top K/M choice values. It takes the place of the
/// config's group limit (in DeepSeek-V3 the two are one: 8 groups on 8 nodes, 4 kept); with
/// `max_nodes` 0 or covering every host the config's routing stands.
struct node_limit {
  std::vector<std::int32_t> node_of;  ///< each routed expert's host, 0-based; empty: off
  std::int64_t max_nodes = 0;

  /// Throws std::invalid_argument naming what does not fit `config`.
  void check(const model_shape& config) const;
};

class moe_router {
 public:
  /// Declares "mlp.gate.weight" and the buffer "mlp.gate.e_score_correction_bias".
  moe_router(const model_shape& config, double balance_alpha, const node_limit& limit,
             parameter_list& parameters);
  void bind(std::span<float* const> weights, std::span<float* const> grads);

  const kernels::cpu::router_shape& shape() const { return shape_; }

  /// selected[T, K], gates[T, K], counts[E] (i64) and the balance loss for x[batch, length, H].
  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const float* x, activation_shape shape, std::int32_t* selected,
                        float* gates, std::int64_t* counts, float* balance_loss,
                        troupe_error* error);
  /// dx += dL/dx through the gates (d_gates) and the balance loss (d_balance).
  troupe_status backward_input(const troupe_exec_context* context, std::int64_t micro_batch,
                               const float* d_gates, float d_balance, float* dx,
                               troupe_error* error);
  /// Accumulates the gate weight's gradient and releases the micro-batch.
  troupe_status backward_weight(const troupe_exec_context* context, std::int64_t micro_batch,
                                troupe_error* error);
  void forget(std::int64_t micro_batch) { saved_.release(micro_batch); }
  std::size_t saved_bytes() const;

 private:
  struct saved_routing {
    const float* x = nullptr;
    activation_shape shape;
    buffer scores;  // [T, E] sigmoid affinities
    device_array<std::int32_t> selected;
    buffer d_logits;  // [T, E], between the input and weight parts
  };

  /// shape_ with group_of on the context's device (node-limited routing).
  kernels::cpu::router_shape shape_on(const troupe_exec_context* context);

  std::int64_t hidden_;
  kernels::cpu::router_shape shape_;
  std::vector<std::int32_t> node_of_;          // node-limited routing's groups; empty: off
  device_array<std::int32_t> node_of_device_;  // its copy on a GPU
  DLDevice node_of_on_{kDLCPU, 0};
  double balance_alpha_;
  std::size_t weight_index_, bias_index_;
  std::span<float*const> weight_, grad_;
  saved_micro_batches<saved_routing> saved_{"router: "};
};

}  // namespace troupe::plugin
