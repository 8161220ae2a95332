#pragma once

// AdamW with DeepSeek-V3's memory recipe: FP32 master weights (the parameter store's values),
// first and second moments kept in BF16 between steps, the update itself in FP32.
//   p <- p - lr * wd * p                                  (decoupled weight decay; matrices only)
//   m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2     (g: the gradient times `grad_scale`)
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// The step uses the FP32 m and v it has just computed and keeps their BF16 roundings, so a run
// resumed from a checkpoint (which holds the BF16 moments) continues bit for bit.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "runtime/model/parameter_store.hpp"
#include "runtime/optim/zero_sharding.hpp"

namespace troupe {

/// The topology's train.beta1, beta2, epsilon and weight_decay (their defaults:
/// runtime/topology/schema.cpp).
struct adamw_settings {
  double beta1 = 0.0;
  double beta2 = 0.0;
  double epsilon = 0.0;
  double weight_decay = 0.0;
};

class adamw {
 public:
  explicit adamw(adamw_settings settings) : settings_(settings) {}

  /// Optimizes every trainable parameter of `store` (moments start at zero, on the store's
  /// device). Weight decay applies to parameters of two or more dimensions (not to norm weights).
  void attach(parameter_store& store);
  /// ZeRO-1: keeps the moments of, and updates, only `ranges`' elements of the parameters named
  /// there (the others stay whole). Before the first step: the moments start at zero again.
  void keep_ranges(const std::map<std::string, element_range>& ranges);

  /// One step with learning rate `lr`, gradients times `grad_scale` (global-norm clipping);
  /// `step` counts from 1 (bias correction). Parameters on the host.
  void step(double lr, double grad_scale, std::int64_t step, thread_pool& pool);
  /// The same where `context` computes: on the host's pool, or on a GPU as one multi-tensor
  /// launch on the context's stream (kernels/cuda/adamw.hpp), for parameters on that GPU; there
  /// it also writes the BF16 copies layers keep of parameters it updates whole
  /// (runtime/exec/bf16_copies.hpp).
  void step(double lr, double grad_scale, std::int64_t step, const exec_context& context);

  /// The moments for a checkpoint: "<name>.exp_avg" and "<name>.exp_avg_sq", bf16 of the
  /// parameter's shape; a kept range as a flat piece "<name>.exp_avg[BEGIN:END]".
  std::vector<std::pair<std::string, tensor>> state() const;
  /// Restores moments written by state() by any number of holders: each slot's elements from the
  /// whole tensor or from the pieces that cover them (a checkpoint of another data-parallel
  /// size). Throws troupe::error naming a missing, misshapen or uncovered one.
  void load_state(const std::vector<std::pair<std::string, tensor>>& tensors);

  std::int64_t parameter_count() const;
  /// Bytes of the moments this optimizer keeps.
  std::int64_t state_bytes() const;
  /// Whether the parameter `name` is kept as a range.
  bool keeps_range(const std::string& name) const;

 private:
  struct slot {
    parameter* p;
    tensor exp_avg, exp_avg_sq;  // bf16, the shape of p (flat, the range's size, when sliced)
    bool decay;
    element_range range;  // the elements updated: all of p unless sliced
    bool sliced = false;
  };
  void upload_slots();
  adamw_settings settings_;
  std::vector<slot> slots_;
  device where_ = device::cpu();
  tensor device_slots_;               ///< u8: the slots as kernels/cuda/adamw.hpp descriptors (GPU)
  std::int64_t device_blocks_ = 0;    ///< the GPU step's blocks (kernels/cuda/adamw.hpp's plan)
  std::uint64_t copies_seen_ = 0;     ///< bf16_copies::changes() when the slots were uploaded
  std::vector<const float*> copied_;  ///< the values whose BF16 copies the GPU step writes
  std::vector<const float*> values_;  ///< every value the GPU step writes
};

}  // namespace troupe
