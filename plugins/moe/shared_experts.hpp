#pragma once

// The shared experts of a DeepSeekMoE layer: one SwiGLU block of width
// n_shared_experts * moe_intermediate_size that every token goes through.
//   y = down(silu(gate x) * up x)

#include <cstdint>
#include <span>
#include <vector>

#include "plugins/common/device_ops.hpp"
#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"
#include "plugins/common/split_backward.hpp"

namespace troupe::plugin {

class shared_experts {
 public:
  /// Declares "mlp.shared_experts.{gate,up,down}_proj.weight" when the model has shared experts.
  shared_experts(const model_shape& config, parameter_list& parameters);
  void bind(std::span<float* const> weights, std::span<float* const> grads);
  bool present() const { return inter_ > 0; }

  /// y = shared(x) for `tokens` rows (zeros when the model has no shared experts).
  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const float* x, std::int64_t tokens, float* y, troupe_error* error);
  /// dx += dL/dx for dy; keeps what the weight part needs.
  troupe_status backward_input(const troupe_exec_context* context, std::int64_t micro_batch,
                               const float* dy, float* dx, troupe_error* error);
  troupe_status backward_weight(const troupe_exec_context* context, std::int64_t micro_batch,
                                troupe_error* error);
  void forget(std::int64_t micro_batch) { saved_.release(micro_batch); }
  std::size_t saved_bytes() const;

 private:
  struct saved_block {
    const float* x = nullptr;
    std::int64_t tokens = 0;
    buffer gate_up, hidden, d_gate_up, d_out;
  };

  std::int64_t hidden_, inter_;
  std::size_t gate_ = 0, up_ = 0, down_ = 0;
  std::span<float*const> weight_, grad_;
  saved_micro_batches<saved_block> saved_{"shared experts: "};
};

}  // namespace troupe::plugin
