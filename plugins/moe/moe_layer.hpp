#pragma once

// DeepSeekMoE feed-forward block of one layer, on the host or a GPU (whole layers; routing only
// runs on the host until expert parallelism over NCCL): shared experts plus fine-grained
// routed SwiGLU experts, routed by moe_router (sigmoid affinities, bias for selection only,
// group-limited top-k, normalised and scaled gates, no token dropping).
//   y = shared(x) + sum over the token's top-k experts e of gate_e * expert_e(x)
//
// Two ways to run it:
//  - whole: this layer computes every routed expert too;
//  - routing only (expert parallelism): the routed experts live on expert shards; this layer
//    computes the router and the shared experts and hands the routing decision out (selected
//    experts and gates), the runtime dispatches the tokens, and combine (expert_combine.hpp) adds
//    the experts' outputs the same way the whole layer does.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"
#include "plugins/common/split_backward.hpp"
#include "plugins/moe/moe_router.hpp"
#include "plugins/moe/routed_experts.hpp"
#include "plugins/moe/shared_experts.hpp"

namespace troupe::plugin {

class moe_layer {
 public:
  moe_layer(const model_shape& config, double balance_alpha, bool routing_only,
            const node_limit& limit = {});

  const parameter_list& parameters() const { return parameters_; }
  troupe_status bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                     troupe_error* error);

  std::int64_t hidden() const { return hidden_; }
  std::int64_t experts() const { return router_.shape().experts; }
  std::int64_t topk() const { return router_.shape().topk; }
  bool routing_only() const { return !routed_.has_value(); }

  /// Whole layer: y [B,S,H], counts [E] (i64), balance_loss [1] (f32).
  /// Routing only: y is the shared experts' output, and selected [B,S,K] (i32) and gates [B,S,K]
  /// (f32) are written too.
  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const DLTensor& x, const DLTensor& y, const DLTensor& counts,
                        const DLTensor& balance_loss, const DLTensor* selected,
                        const DLTensor* gates, troupe_error* error);
  /// dy, the balance loss's gradient (0 when absent) and, routing only, d_gates [B,S,K] ->
  /// dx (+=) and the parameter gradients.
  troupe_status backward(const troupe_exec_context* context, std::int64_t micro_batch,
                         troupe_backward_part part, const DLTensor* dy, float d_balance_loss,
                         const DLTensor* d_gates, const DLTensor* dx, troupe_error* error);
  void forget(std::int64_t micro_batch);
  const std::string& statistics();

 private:
  struct saved_state {
    activation_shape shape;
    device_array<std::int32_t> selected;  // [T, K] (whole layer)
    buffer gates;                         // [T, K] (whole layer)
    // The assignments grouped by expert (kernels/cpu/expert_combine.hpp), whole layer.
    device_array<std::int64_t> order, position, offsets;
    std::vector<std::int64_t> host_offsets;    // the expert GEMMs' shapes
    buffer expert_out;                         // [T*K, H] expert outputs, grouped by expert
    device_array<std::uint16_t> expert_out16;  // the same in BF16, where the experts write so
  };

  troupe_status backward_input(const troupe_exec_context* context, std::int64_t micro_batch,
                               saved_state& s, const float* dy, float d_balance,
                               const float* d_gates, float* dx, troupe_error* error);
  troupe_status backward_weight(const troupe_exec_context* context, std::int64_t micro_batch,
                                troupe_error* error);

  std::int64_t hidden_;
  parameter_list parameters_;
  moe_router router_;
  std::optional<routed_experts> routed_;
  shared_experts shared_;
  std::vector<float*> weight_, grad_;
  saved_micro_batches<saved_state> saved_;
  std::string statistics_;
};

}  // namespace troupe::plugin
