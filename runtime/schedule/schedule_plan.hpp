#pragma once

// Pipeline schedules, built as a plan before they run: for each pipeline rank, the ordered list
// of ops it executes in one training step. Ranks run their lists concurrently and wait only for
// the activations and gradients their next op needs.
//
//  - sequential: one micro-batch at a time through every stage, forward then backward (the
//    reference every other schedule must match);
//  - 1f1b: PipeDream-flush; rank r runs PP-1-r warm-up forwards, then alternates one forward and
//    one backward, then drains its backwards. Bubble (PP-1)(F+B).
//  - dualpipe: DeepSeek-V3's bidirectional schedule. Rank r holds stage r and stage PP-1-r;
//    the first half of the micro-batches enters at rank 0 and flows to rank PP-1 through the
//    first copies of the stages, the second half enters at rank PP-1 and flows back through the
//    second copies. Forward and backward chunks of the two directions overlap in pairs (F&B),
//    and backward splits into input and deferred weight parts to fill the rest. Needs an even
//    PP and an even number of micro-batches of at least 2 PP. Bubble (PP/2-1)(F&B+B-3W).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/schedule/pipeline_op.hpp"
#include "runtime/schedule/schedule_kind.hpp"

namespace troupe {

class schedule_plan {
 public:
  /// The most (stage, micro-batch) pairs a plan holds: 2^20, far above any real pipeline (16
  /// stages of 1,024 micro-batches is 2^14) and small enough that a plan is a few tens of MB.
  static constexpr std::int64_t max_stage_micro_batches = std::int64_t{1} << 20;

  /// Builds the plan; throws troupe::error naming the constraint a size breaks.
  static schedule_plan build(schedule_kind kind, std::int32_t stages, std::int64_t micro_batches);

  schedule_kind kind() const { return kind_; }
  std::int32_t stages() const { return stages_; }
  std::int32_t ranks() const { return stages_; }
  std::int64_t micro_batches() const { return micro_batches_; }
  /// Copies of each stage: 2 for DualPipe, else 1.
  std::int32_t copies() const { return kind_ == schedule_kind::dualpipe ? 2 : 1; }

  const std::vector<pipeline_op>& ops(std::int32_t rank) const {
    return ops_[static_cast<std::size_t>(rank)];
  }

  /// The copy of a stage a micro-batch goes through (DualPipe: its direction).
  std::int32_t copy_of(std::int64_t micro_batch) const;
  /// The rank that runs `stage` for `micro_batch`.
  std::int32_t rank_of(std::int32_t stage, std::int64_t micro_batch) const;
  /// The rank that holds copy `copy` of `stage`.
  std::int32_t rank_of_copy(std::int32_t stage, std::int32_t copy) const;
  /// The (stage, copy) pairs a rank holds, in the order its chunks are numbered.
  std::vector<std::pair<std::int32_t, std::int32_t>> chunks(std::int32_t rank) const;

 private:
  schedule_kind kind_ = schedule_kind::one_f_one_b;
  std::int32_t stages_ = 1;
  std::int64_t micro_batches_ = 1;
  std::vector<std::vector<pipeline_op>> ops_;
};

}  // namespace troupe
