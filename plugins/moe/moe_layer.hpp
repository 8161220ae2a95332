#pragma once

// DeepSeekMoE feed-forward block for one layer, on the host: shared experts plus fine-grained
// routed SwiGLU experts, routed by kernels/cpu/router (sigmoid affinities, bias for selection
// only, group-limited top-k, normalised and scaled gates, no token dropping).
//   y = shared(x) + sum over the token's top-k experts e of gate_e * expert_e(x)
// Outputs per micro-batch: y, the number of (token, slot) pairs routed to each expert (for the
// bias balancer), and the sequence-wise balance loss.

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/router.hpp"
#include "plugins/common/plugin_support.hpp"
#include "runtime/model/model_config.hpp"

namespace troupe::plugin {

class moe_layer {
 public:
  moe_layer(const model_config& config, double balance_alpha);

  const parameter_list& parameters() const { return parameters_; }
  troupe_status bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                     troupe_error* error);

  std::int64_t hidden() const { return hidden_; }
  std::int64_t experts() const { return router_.experts; }

  /// y [B,S,H], counts [E] (i64), balance_loss [1] (f32).
  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const DLTensor& x, const DLTensor& y, const DLTensor& counts,
                        const DLTensor& balance_loss, troupe_error* error);
  /// dy, and the balance loss's gradient (a scalar; 0 when absent) -> dx (+=), parameter grads.
  troupe_status backward(const troupe_exec_context* context, std::int64_t micro_batch,
                         troupe_backward_part part, const DLTensor* dy, float d_balance_loss,
                         const DLTensor* dx, troupe_error* error);
  void forget(std::int64_t micro_batch) { saved_.erase(micro_batch); }
  const std::string& statistics();

 private:
  struct saved_state {
    const float* x = nullptr;
    activation_shape shape;
    std::vector<float> scores;           // [T, E] sigmoid affinities
    std::vector<std::int32_t> selected;  // [T, K]
    std::vector<float> gates;            // [T, K]
    std::vector<std::int64_t> order;    // assignments (t*K + k) grouped by expert, tokens ascending
    std::vector<std::int64_t> offsets;  // [E + 1] into order
    std::vector<float> gate_up;         // [T*K, 2I] expert pre-activations, in `order`
    std::vector<float> expert_out;      // [T*K, H] expert outputs before the gate, in `order`
    std::vector<float> shared_gate_up;  // [T, 2 I_s]
    // Between the input-gradient and weight-gradient parts:
    std::vector<float> d_gate_up, d_expert_out, d_shared_gate_up, d_shared_out, d_logits, shared_h,
        expert_h;
    bool input_part_done = false;
  };

  troupe_status backward_input(const troupe_exec_context* context, saved_state& s, const float* dy,
                               float d_balance, float* dx, troupe_error* error);
  troupe_status backward_weight(const troupe_exec_context* context, saved_state& s,
                                troupe_error* error);

  std::int64_t hidden_, inter_, shared_inter_;
  kernels::cpu::router_shape router_;
  double balance_alpha_;

  parameter_list parameters_;
  std::size_t router_weight_, router_bias_, shared_gate_, shared_up_, shared_down_;
  std::vector<std::size_t> expert_gate_, expert_up_, expert_down_;
  std::vector<float*> weight_, grad_;

  micro_batches<saved_state> saved_;
  std::string statistics_;
};

}  // namespace troupe::plugin
