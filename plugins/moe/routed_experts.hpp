#pragma once

// Fine-grained routed SwiGLU experts (all of a layer's, or an expert shard's subset), computing
// rows grouped by expert (kernels/cpu/expert_combine.hpp):
//   y_rows[r] = down_e(silu(gate_e x_r) * up_e x_r)   for the rows r of expert e
// Backward recomputes the SwiGLU output instead of keeping it between forward and backward, except
// under the grouped GEMMs' BF16 math, where forward keeps it in BF16 (half the bytes of the
// pre-activations it would be recomputed from, which backward reads anyway).

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "plugins/common/device_ops.hpp"
#include "plugins/common/gradient_squares.hpp"
#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"
#include "plugins/common/split_backward.hpp"
#include "plugins/common/weight_copies.hpp"

namespace troupe::plugin {

class routed_experts {
 public:
  /// Declares the experts `ids` (ascending global indices) in `parameters` as
  /// "mlp.experts.<id>.{gate,up,down}_proj.weight".
  routed_experts(const model_shape& config, std::vector<std::int64_t> ids,
                 parameter_list& parameters);

  /// `weights` and `grads` are the owning layer's bound arrays, in its parameters' order.
  void bind(std::span<float* const> weights, std::span<float* const> grads);

  std::int64_t count() const { return static_cast<std::int64_t>(ids_.size()); }
  const std::vector<std::int64_t>& ids() const { return ids_; }

  /// Whether the experts' GEMMs run grouped on the device for `context` (then forward needs the
  /// offsets on the device only, not on the host).
  bool grouped(const troupe_exec_context* context) const {
    return ops::grouped_expert_gemms(context);
  }
  /// Rows [offsets[e], offsets[e+1]) belong to local expert e: `offsets` on the host (one GEMM
  /// per expert), or `device_offsets` with `rows` their total when grouped(). Row r's input is
  /// x[order[r] / topk] (order null: x[r]); x, order and the offsets (on the context's device)
  /// stay valid until the weight part.
  /// Where bf16_rows(), the output rows may be written rounded to BF16 into `y_rows16` instead
  /// (y_rows null).
  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const float* x, const std::int64_t* order, std::int64_t topk,
                        std::span<const std::int64_t> offsets, const std::int64_t* device_offsets,
                        std::int64_t rows, float* y_rows, troupe_error* error,
                        std::uint16_t* y_rows16 = nullptr);
  /// dx_rows[r] = dL/d(input of row r) for dy_rows (grouped(): written whole; on the host's
  /// per-expert path added to, so the caller zeroes it there); keeps what the weight part needs.
  /// Where bf16_rows(), the caller may hand over dy_rows already rounded (`dy_rows16`, taken;
  /// dy_rows is not read then), and have dx_rows written rounded to BF16 into `dx_rows16`
  /// instead (dx_rows null).
  troupe_status backward_input(const troupe_exec_context* context, std::int64_t micro_batch,
                               const float* dy_rows, float* dx_rows, troupe_error* error,
                               device_array<std::uint16_t>* dy_rows16 = nullptr,
                               std::uint16_t* dx_rows16 = nullptr);
  /// Whether the grouped GEMMs' BF16 activations reach the caller on this context: the rows'
  /// output and input gradient may be BF16 (forward's `y_rows16`, backward's `dx_rows16`), and
  /// backward reads its output gradient rounded to BF16.
  bool bf16_rows(const troupe_exec_context* context) const {
    return grouped(context) && bf16_activations(context);
  }
  /// Accumulates the experts' weight gradients and releases the micro-batch.
  troupe_status backward_weight(const troupe_exec_context* context, std::int64_t micro_batch,
                                troupe_error* error);
  void forget(std::int64_t micro_batch) { saved_.release(micro_batch); }
  bool in_flight(std::int64_t micro_batch) const { return saved_.contains(micro_batch); }
  std::size_t saved_bytes() const;

 private:
  struct saved_rows {
    const float* x = nullptr;
    const std::int64_t* order = nullptr;
    std::int64_t topk = 1;
    std::vector<std::int64_t> offsets;  // on the host: the GEMM shapes (one GEMM per expert)
    const std::int64_t* device_offsets = nullptr;  // grouped GEMMs
    std::int64_t rows = 0;
    bool grouped = false;
    buffer gate_up;    // [R, 2I] pre-activations
    buffer hidden;     // [R, I] SwiGLU output, recomputed by the input part
    buffer d_gate_up;  // [R, 2I]
    buffer d_out;      // [R, H] dy_rows, for the down projection's weight gradient
    // NOTES: under the grouped GEMMs' BF16 math (`bf16`) the three activations the GEMMs read in
    // backward are kept rounded to BF16 by their producers instead of in f32 (hidden, d_gate_up
    // and d_out stay empty): half the memory, and no rounding pass of its own in each GEMM (two
    // per tensor: Dgrad and Wgrad read each).
    // Forward decides it: gate_up16 holds the pre-activations (the grouped Fprop's BF16 output)
    // instead of gate_up, and hidden16 SwiGLU's output, kept from forward.
    bool bf16 = false;
    device_array<std::uint16_t> gate_up16, hidden16, d_gate_up16, d_out16;
    // The gathered input rows rounded once in forward (BF16 math): gate+up's Fprop and Wgrad read
    // them as direct rows instead of each gathering and rounding x again.
    device_array<std::uint16_t> input16;
  };
  /// Runs body(context, local expert, first row, rows) for every expert with rows: in parallel on
  /// the host's pool (each expert whole on one worker, its context a serial one), in order on a
  /// GPU (one stream).
  // NOTES: on a GPU this is one GEMM launch per expert and pass; a grouped GEMM (one launch per
  // layer) replaces it in the GPU training issue's performance work.
  template <class F>
  troupe_status for_each_expert(const troupe_exec_context* context, const saved_rows& s, F&& body,
                                troupe_error* error);
  /// The input rows of expert e into `rows` (or straight from x when rows are contiguous).
  const float* input_rows(const troupe_exec_context* context, const saved_rows& s,
                          std::int64_t first, std::int64_t n, buffer& rows) const;

  /// The grouped GEMMs' per-expert weight and gradient pointers, on the device (made once).
  void ensure_pointer_tables(const troupe_exec_context* context);
  ops::grouped_rows grouping(const saved_rows& s, bool gathered) const;
  troupe_status grouped_forward(const troupe_exec_context* context, saved_rows& s, float* y_rows,
                                std::uint16_t* y_rows16);
  void grouped_backward_input(const troupe_exec_context* context, saved_rows& s, float* dx_rows,
                              std::uint16_t* dx_rows16);
  void grouped_backward_weight(const troupe_exec_context* context, saved_rows& s);
  /// Whether the grouped GEMMs read BF16 activations from their producers on this context: their
  /// BF16 math, and widths the pre-rounded operands allow (multiples of 8).
  bool bf16_activations(const troupe_exec_context* context) const;
  /// What the experts' gradients hold at this Wgrad (their parameters are
  /// TROUPE_PARAM_GRAD_OVERWRITTEN: the runtime may have left them as they were).
  ops::gradients_hold held_gradients(const troupe_exec_context* context) {
    return generations_.overwrite(context) ? ops::gradients_hold::anything
                                           : ops::gradients_hold::sums;
  }
  gradient_generations generations_;

  std::int64_t hidden_, inter_;
  std::vector<std::int64_t> ids_;
  /// The experts' weights rounded to BF16 for the grouped BF16 passes, derived again whenever the
  /// runtime's parameter version has moved: once per optimizer step instead of in every Fprop and
  /// Dgrad of every micro-batch. Each copy is null when the context computes exactly or cannot
  /// say when parameters change.
  struct rounded_set {
    const void* gate_up = nullptr;
    const void* down = nullptr;
  };
  rounded_set rounded_weights(const troupe_exec_context* context);

  device_array<const float*> gate_weights_, up_weights_, down_weights_;
  device_array<std::uint16_t> rounded_gate_up_, rounded_down_;
  /// Declared after the copies' memory: destroyed first, it withdraws the requests.
  bf16_weight_copies copies_;
  /// Each expert's three weights as pieces of the copies (where no row needs padding).
  std::vector<bf16_weight_copies::piece> copy_pieces();
  device_array<float*> gate_grads_, up_grads_, down_grads_;
  /// The grouped Wgrad's sums of squares of the gradients: gate and up of expert e at 2e and
  /// 2e + 1 (one stacked GEMM), or one table's at e, then down's from 2 * count() on.
  device_array<double> squares_;
  /// Declared after the sums' memory: destroyed first, it withdraws the reports.
  gradient_square_reports squares_reported_;
  /// Reports the sums the grouped Wgrad wrote (`gate_up`, `down`: whether each GEMM wrote them)
  /// and withdraws the earlier reports of the gradients it wrote without.
  void report_squares(const troupe_exec_context* context, bool gate_up, bool down);
  std::vector<std::size_t> gate_, up_, down_;
  std::span<float*const> weight_, grad_;
  saved_micro_batches<saved_rows> saved_{"experts: "};
};

}  // namespace troupe::plugin
