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
    // NOTES: under the runtime's BF16 GEMMs (`bf16`) every GEMM operand is BF16 from its producer
    // (the input rounded once, SwiGLU's output and gradient, the output gradient rounded once)
    // and the weights are BF16 copies the optimizer keeps: no GEMM rounds anything, and gate and
    // up are one GEMM each way over their stacked copy. hidden, d_gate_up and d_out stay empty.
    bool bf16 = false;
    device_array<std::uint16_t> x16, hidden16, d_gate_up16, d_out16;
  };

  /// Whether this context runs the BF16 path: the runtime's cuBLASLt BF16 provider (not a GEMM
  /// plugin's: fp8 keeps its own linear layers), widths that are multiples of 8.
  bool bf16_path(const troupe_exec_context* context) const;
  /// The weights' BF16 copies, current for the context's parameter version: [gate; up] stacked
  /// [2I, H], and down [H, I].
  void refresh_copies(const troupe_exec_context* context);
  void forward_bf16(const troupe_exec_context* context, saved_block& s, float* y);
  void backward_input_bf16(const troupe_exec_context* context, saved_block& s, const float* dy,
                           float* dx);
  void backward_weight_bf16(const troupe_exec_context* context, saved_block& s, bool overwrite);

  std::int64_t hidden_, inter_;
  std::size_t gate_ = 0, up_ = 0, down_ = 0;
  std::span<float*const> weight_, grad_;
  saved_micro_batches<saved_block> saved_{"shared experts: "};
  device_array<std::uint16_t> gate_up16_, down16_;
  bf16_weight_copies copies_;  // after the copies' memory: withdraws its requests first
  gradient_generations generations_;
};

}  // namespace troupe::plugin
