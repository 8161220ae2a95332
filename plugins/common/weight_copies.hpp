#pragma once

// BF16 copies of a layer's weights for its BF16 GEMMs, derived once per parameter version instead
// of in every GEMM. Where the runtime offers it (ABI 1.5: keep_bf16_copy), its optimizer writes
// the copies in the pass that updates the weights, and the layer rounds them itself only when the
// weights changed otherwise (the first step, a checkpoint load). The layer owns the copies'
// memory; this class asks the runtime to keep them and withdraws the request before that memory
// goes.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/abi/troupe_plugin.h"

namespace troupe::plugin {

class bf16_weight_copies {
 public:
  /// One weight's copy: `count` BF16 values at `copy` for the f32 parameter at `value`.
  struct piece {
    const float* value;
    std::uint16_t* copy;
    std::int64_t count;
  };

  bf16_weight_copies() = default;
  ~bf16_weight_copies() { withdraw(); }
  bf16_weight_copies(const bf16_weight_copies&) = delete;
  bf16_weight_copies& operator=(const bf16_weight_copies&) = delete;

  /// Whether the copies must be laid out (memory, then keep()): the first time, and after reset().
  bool unplaced() const { return !placed_; }

  /// Asks the runtime to write `pieces` with each optimizer step, where `context` offers it (a
  /// request it refuses for one piece is withdrawn for all). Marks the copies placed.
  void keep(const troupe_exec_context* context, std::vector<piece> pieces) {
    withdraw();
    placed_ = true;
    current_ = false;
    if (context->struct_size <
            offsetof(troupe_exec_context, bf16_copy_current) + sizeof(context->bf16_copy_current) ||
        context->keep_bf16_copy == nullptr || context->bf16_copy_current == nullptr)
      return;
    keep_ = context->keep_bf16_copy;
    bool kept = true;
    for (const piece& p : pieces) {
      kept = kept && keep_(p.value, p.copy, p.count) == 1;
      kept_.push_back(p.value);
    }
    if (!kept) withdraw();
  }

  /// Whether the caller must round the copies now: the parameter version moved since they were
  /// last made (or they never were) and the runtime's optimizer has not written them since.
  /// Afterwards they count as current for this version.
  bool stale(const troupe_exec_context* context) {
    const std::uint64_t version = context->parameter_version();
    if (current_ && version == version_) return false;
    const bool written = !kept_.empty() && all_written(context);
    current_ = true;
    version_ = version;
    return !written;
  }

  /// The layer's parameters were bound anew: lay the copies out again before their next use.
  void reset() {
    withdraw();
    placed_ = false;
    current_ = false;
  }

 private:
  bool all_written(const troupe_exec_context* context) const {
    for (const float* value : kept_)
      if (context->bf16_copy_current(value) != 1) return false;
    return true;
  }
  void withdraw() {
    for (const float* value : kept_) keep_(value, nullptr, 0);
    kept_.clear();
  }

  std::vector<const float*> kept_;  ///< the values whose copies the runtime keeps
  std::int32_t (*keep_)(const float*, std::uint16_t*, std::int64_t) = nullptr;
  bool placed_ = false, current_ = false;
  std::uint64_t version_ = 0;
};

/// What a layer's weight gradients hold at a backward, for layers whose parameters are
/// TROUPE_PARAM_GRAD_OVERWRITTEN: `overwrite` at the first backward since the context's
/// gradient_generation (ABI 1.4) moved (the runtime may have left them as they were), else the
/// sums of this step's earlier micro-batches.
class gradient_generations {
 public:
  bool overwrite(const troupe_exec_context* context) {
    if (context->struct_size <
        offsetof(troupe_exec_context, gradient_generation) + sizeof(context->gradient_generation))
      return false;  // a runtime before ABI 1.4 zeroes them
    const std::uint64_t now = context->gradient_generation;
    const bool first = !seen_ || seen_generation_ != now;
    seen_ = true;
    seen_generation_ = now;
    return first;
  }

 private:
  bool seen_ = false;
  std::uint64_t seen_generation_ = 0;
};

}  // namespace troupe::plugin
