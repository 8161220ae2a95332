#pragma once

// The shared experts of a DeepSeekMoE layer: one SwiGLU block of width
// n_shared_experts * moe_intermediate_size that every token goes through.
//   y = down(silu(gate x) * up x)

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/dispatch/swiglu_block.hpp"
#include "plugins/common/device_ops.hpp"
#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"
#include "plugins/common/split_backward.hpp"
#include "plugins/common/weight_copies.hpp"

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
    // Under the runtime's BF16 GEMMs (`bf16`) the block runs on BF16 operands
    // (kernels/dispatch/swiglu_block.hpp) over the weights' BF16 copies the optimizer keeps; the
    // f32 buffers above stay empty.
    bool bf16 = false;
    ops::swiglu_bf16_saved block;
  };

  /// Whether this context runs the BF16 path: the runtime's cuBLASLt BF16 provider (not a GEMM
  /// plugin's: fp8 keeps its own linear layers), widths that are multiples of 8.
  bool bf16_path(const troupe_exec_context* context) const;
  /// The weights' BF16 copies, current for the context's parameter version: [gate; up] stacked
  /// [2I, H], and down [H, I].
  void refresh_copies(const troupe_exec_context* context);
  ops::swiglu_bf16_weights bf16_weights() const;

  std::int64_t hidden_, inter_;
  std::size_t gate_ = 0, up_ = 0, down_ = 0;
  std::span<float*const> weight_, grad_;
  saved_micro_batches<saved_block> saved_{"shared experts: "};
  device_array<std::uint16_t> gate_up16_, down16_;
  bf16_weight_copies copies_;  // after the copies' memory: withdraws its requests first
  gradient_generations generations_;
};

}  // namespace troupe::plugin
