#pragma once

// Where a MoE layer's routed experts are computed when the stage does not hold them (expert
// parallelism). The stage routes, hands over the token rows grouped by expert (the layout of
// kernels/cpu/expert_combine.hpp) and combines the outputs it gets back; backward the same with
// gradients.

#include <cstdint>
#include <span>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

class expert_backend {
 public:
  virtual ~expert_backend() = default;

  /// y_rows [R, H] for rows [R, H] of layer `layer`: counts[e] consecutive rows belong to expert
  /// e, for every routed expert of the layer in ascending order.
  virtual tensor forward(std::int64_t layer, std::int64_t micro_batch, const tensor& rows,
                         std::span<const std::int64_t> counts) = 0;
  /// dL/drows [R, H] for dL/dy_rows; the experts keep what their weight gradients need.
  virtual tensor backward_input(std::int64_t layer, std::int64_t micro_batch,
                                const tensor& dy_rows) = 0;
  /// The experts' weight gradients of the micro-batch (after backward_input).
  virtual void backward_weight(std::int64_t layer, std::int64_t micro_batch) = 0;
  /// Drops what the experts saved for the micro-batch.
  virtual void forget(std::int64_t layer, std::int64_t micro_batch) = 0;
  /// After a forward that failed part-way: every expert drops what it may have saved for the
  /// micro-batch; never throws.
  virtual void abandon(std::int64_t layer, std::int64_t micro_batch) = 0;
  /// The experts each of `tokens` tokens chose (selected[tokens, k]) in `layer`'s forward, before
  /// its rows go out: for statistics of where they go (tokens crossing hosts).
  virtual void observe_routing(std::int64_t layer, const std::int32_t* selected,
                               std::int64_t tokens, std::int64_t k) {
    (void)layer, (void)selected, (void)tokens, (void)k;
  }
};

}  // namespace troupe
