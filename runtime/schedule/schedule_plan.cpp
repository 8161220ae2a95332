#include "runtime/schedule/schedule_plan.hpp"

#include <deque>

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace troupe {

std::string describe(const pipeline_op& op) {
  const auto id = [](const stage_work& w) { return std::to_string(w.micro_batch); };
  switch (op.kind) {
    case op_kind::forward:
      return "F" + id(op.work);
    case op_kind::backward:
      return "B" + id(op.work);
    case op_kind::backward_input:
      return "b" + id(op.work);
    case op_kind::backward_weight:
      return "W" + id(op.work);
    case op_kind::forward_backward:
      return "F" + id(op.work) + "&B" + id(op.backward_work);
  }
  return "?";
}

std::string_view to_string(schedule_kind kind) {
  switch (kind) {
    case schedule_kind::sequential:
      return "sequential";
    case schedule_kind::one_f_one_b:
      return "1f1b";
    case schedule_kind::dualpipe:
      return "dualpipe";
  }
  return "?";
}

schedule_kind parse_schedule_kind(std::string_view name) {
  if (name == "sequential") return schedule_kind::sequential;
  if (name == "1f1b") return schedule_kind::one_f_one_b;
  if (name == "dualpipe") return schedule_kind::dualpipe;
  fail("unknown schedule '{}': use sequential, 1f1b or dualpipe", name);
}

std::int32_t schedule_plan::copy_of(std::int64_t micro_batch) const {
  return kind_ == schedule_kind::dualpipe && micro_batch >= micro_batches_ / 2 ? 1 : 0;
}

std::int32_t schedule_plan::rank_of_copy(std::int32_t stage, std::int32_t copy) const {
  return copy == 0 ? stage : stages_ - 1 - stage;
}

std::int32_t schedule_plan::rank_of(std::int32_t stage, std::int64_t micro_batch) const {
  return rank_of_copy(stage, copy_of(micro_batch));
}

std::vector<std::pair<std::int32_t, std::int32_t>> schedule_plan::chunks(std::int32_t rank) const {
  if (kind_ == schedule_kind::dualpipe) return {{rank, 0}, {stages_ - 1 - rank, 1}};
  return {{rank, 0}};
}

namespace {

/// Hands out a rank's ops in order, numbering micro-batches per direction.
class op_writer {
 public:
  op_writer(std::vector<pipeline_op>& out, std::int32_t rank, std::int32_t stages,
            std::int64_t per_direction, bool bidirectional)
      : out_(out),
        rank_(rank),
        stages_(stages),
        per_direction_(per_direction),
        bidirectional_(bidirectional) {}

  stage_work next_forward(std::int32_t direction) { return take(forwards_, direction); }
  stage_work next_backward(std::int32_t direction) { return take(backwards_, direction); }

  void forward(std::int32_t direction) {
    out_.push_back({op_kind::forward, next_forward(direction), {}});
  }
  /// A full backward, or (deferred) its input part, queueing the weight part.
  void backward(std::int32_t direction, bool defer_weights = false) {
    const stage_work work = next_backward(direction);
    out_.push_back({defer_weights ? op_kind::backward_input : op_kind::backward, work, {}});
    if (defer_weights) deferred_.push_back(work);
  }
  void weights() {
    if (deferred_.empty()) fail("schedule plan: a weight chunk with nothing deferred");
    out_.push_back({op_kind::backward_weight, deferred_.front(), {}});
    deferred_.pop_front();
  }
  void forward_backward(std::int32_t forward_direction, std::int32_t backward_direction) {
    const stage_work f = next_forward(forward_direction);
    const stage_work b = next_backward(backward_direction);
    out_.push_back({op_kind::forward_backward, f, b});
  }
  bool drained() const { return deferred_.empty(); }

 private:
  stage_work take(std::int64_t (&counter)[2], std::int32_t direction) {
    stage_work work;
    work.copy = bidirectional_ ? direction : 0;
    work.stage = direction == 0 ? rank_ : stages_ - 1 - rank_;
    work.micro_batch = direction * per_direction_ + counter[direction]++;
    return work;
  }

  std::vector<pipeline_op>& out_;
  std::int32_t rank_, stages_;
  std::int64_t per_direction_;
  bool bidirectional_;
  std::int64_t forwards_[2] = {0, 0}, backwards_[2] = {0, 0};
  std::deque<stage_work> deferred_;
};

void build_sequential(std::vector<pipeline_op>& ops, std::int32_t rank, std::int32_t stages,
                      std::int64_t micro_batches) {
  op_writer w(ops, rank, stages, micro_batches, false);
  for (std::int64_t m = 0; m < micro_batches; ++m) {
    w.forward(0);
    w.backward(0);
  }
}

void build_one_f_one_b(std::vector<pipeline_op>& ops, std::int32_t rank, std::int32_t stages,
                       std::int64_t micro_batches) {
  op_writer w(ops, rank, stages, micro_batches, false);
  const std::int64_t warmup = std::min<std::int64_t>(stages - 1 - rank, micro_batches);
  for (std::int64_t i = 0; i < warmup; ++i) w.forward(0);
  for (std::int64_t i = 0; i < micro_batches - warmup; ++i) {
    w.forward(0);
    w.backward(0);
  }
  for (std::int64_t i = 0; i < warmup; ++i) w.backward(0);
}

// The eight phases of DeepSeek's DualPipe, per rank. "near" is the direction whose micro-batches
// enter at this rank's end of the pipeline, "far" the other; half_rank is the distance from
// that end.
void build_dualpipe(std::vector<pipeline_op>& ops, std::int32_t rank, std::int32_t stages,
                    std::int64_t micro_batches) {
  const std::int64_t half = stages / 2;
  const std::int64_t h = std::min<std::int64_t>(rank, stages - 1 - rank);
  const std::int32_t near = rank < half ? 0 : 1, far = 1 - near;
  const bool middle = h == half - 1;
  op_writer w(ops, rank, stages, micro_batches / 2, true);
  // 1: forwards of the near direction fill the pipeline.
  for (std::int64_t i = 0; i < 2 * (half - h - 1); ++i) w.forward(near);
  // 2: both directions' forwards, alternating.
  for (std::int64_t i = 0; i < h + 1; ++i) {
    w.forward(near);
    w.forward(far);
  }
  // 3: far backwards with deferred weights, a weight chunk, a far forward.
  for (std::int64_t i = 0; i < half - h - 1; ++i) {
    w.backward(far, true);
    w.weights();
    w.forward(far);
  }
  // 4: the steady state, forward and backward chunks of the two directions overlapped in pairs
  // (the middle ranks run their first pair apart, which shortens the bubble).
  for (std::int64_t i = 0; i < micro_batches / 2 - stages + h + 1; ++i) {
    if (i == 0 && middle) {
      w.forward(near);
      w.backward(far);
    } else {
      w.forward_backward(near, far);
    }
    w.forward_backward(far, near);
  }
  // 5: a far backward, then a pair.
  for (std::int64_t i = 0; i < half - h - 1; ++i) {
    w.backward(far);
    w.forward_backward(far, near);
  }
  // 6: the remaining backwards; the second half of them defers its weights.
  bool defer = false;
  for (std::int64_t i = 0; i < h + 1; ++i) {
    if (i == (h + 1) / 2 && h % 2 == 1) defer = true;
    w.backward(far, defer);
    if (i == (h + 1) / 2 && h % 2 == 0) defer = true;
    w.backward(near, defer);
  }
  // 7: weight chunks interleaved with the last near backwards.
  for (std::int64_t i = 0; i < half - h - 1; ++i) {
    w.weights();
    w.backward(near, true);
  }
  // 8: the deferred weights that are left.
  for (std::int64_t i = 0; i < h + 1; ++i) w.weights();
  if (!w.drained()) fail("schedule plan: DualPipe rank {} leaves weight chunks undone", rank);
}

}  // namespace

schedule_plan schedule_plan::build(schedule_kind kind, std::int32_t stages,
                                   std::int64_t micro_batches) {
  if (stages < 1) fail("a pipeline needs at least one stage, got {}", stages);
  if (micro_batches < 1) fail("a step needs at least one micro-batch, got {}", micro_batches);
  if (micro_batches > max_stage_micro_batches / stages)
    fail("{} stages x {} micro-batches is more than a plan holds ({} pairs)", stages, micro_batches,
         max_stage_micro_batches);
  if (kind == schedule_kind::dualpipe) {
    if (stages % 2 != 0) fail("dualpipe needs an even number of pipeline stages, got {}", stages);
    if (micro_batches % 2 != 0 || micro_batches < 2 * stages)
      fail("dualpipe needs an even number of micro-batches of at least 2 x {} stages = {}, got {}",
           stages, 2 * stages, micro_batches);
  }
  schedule_plan plan;
  plan.kind_ = kind;
  plan.stages_ = stages;
  plan.micro_batches_ = micro_batches;
  plan.ops_.resize(static_cast<std::size_t>(stages));
  for (std::int32_t rank = 0; rank < stages; ++rank) {
    auto& ops = plan.ops_[static_cast<std::size_t>(rank)];
    switch (kind) {
      case schedule_kind::sequential:
        build_sequential(ops, rank, stages, micro_batches);
        break;
      case schedule_kind::one_f_one_b:
        build_one_f_one_b(ops, rank, stages, micro_batches);
        break;
      case schedule_kind::dualpipe:
        build_dualpipe(ops, rank, stages, micro_batches);
        break;
    }
  }
  return plan;
}

}  // namespace troupe
