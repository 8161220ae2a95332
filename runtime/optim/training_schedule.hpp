#pragma once

// What changes from step to step: the learning rate (linear warm-up, then cosine decay to a
// floor) and, optionally, the batch size (a linear ramp of the micro-batches per step, as
// DeepSeek-V3 ramps its batch size early in training).

#include <cstdint>

namespace troupe {

// Both are made from the topology's [train] and [schedule] (their defaults:
// runtime/topology/schema.cpp).

struct lr_schedule {
  double peak = 0.0;
  double floor = 0.0;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 0;

  /// The rate of step `step` (0-based): peak * (step+1)/warmup during warm-up, then
  /// floor + (peak - floor) * (1 + cos(pi * progress)) / 2 with progress from 0 to 1 over the
  /// remaining steps.
  double at(std::int64_t step) const;
};

struct batch_ramp {
  std::int64_t full = 0;      ///< micro-batches per step after the ramp
  std::int64_t start = 0;     ///< micro-batches at step 0
  std::int64_t steps = 0;     ///< ramp length; 0: always `full`
  std::int64_t multiple = 1;  ///< counts are rounded down to a multiple of this (DualPipe: 2)

  /// Micro-batches of step `step` (0-based), rising linearly from start to full.
  std::int64_t at(std::int64_t step) const;
};

}  // namespace troupe
