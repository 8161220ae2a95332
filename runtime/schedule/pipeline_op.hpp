#pragma once

// One step of a pipeline rank's work: forward or backward of one micro-batch on one stage. A
// stage may exist twice (DualPipe runs every stage in both directions, on two ranks), so ops
// also name the copy.

#include <cstdint>
#include <string>

namespace troupe {

enum class op_kind : std::uint8_t {
  forward,
  backward,          ///< input and weight gradients together
  backward_input,    ///< input gradients only; the weight part comes later (zero bubble)
  backward_weight,   ///< the deferred weight gradients of an earlier backward_input
  forward_backward,  ///< DualPipe's overlapped pair: forward of one chunk, backward of another
};

/// A stage's work on one micro-batch.
struct stage_work {
  std::int32_t stage = 0;
  std::int32_t copy = 0;  ///< which copy of the stage (DualPipe: the direction)
  std::int64_t micro_batch = 0;
  bool operator==(const stage_work&) const = default;
};

struct pipeline_op {
  op_kind kind = op_kind::forward;
  stage_work work;           ///< forward, backward*, or the forward half of forward_backward
  stage_work backward_work;  ///< forward_backward: the backward half (a full backward)
  bool operator==(const pipeline_op&) const = default;
};

/// "F3", "B3", "b3" (input part), "W3" (weight part), "F3&B1".
std::string describe(const pipeline_op& op);

}  // namespace troupe
