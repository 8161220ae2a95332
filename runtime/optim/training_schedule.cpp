#include "runtime/optim/training_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace troupe {

double lr_schedule::at(std::int64_t step) const {
  if (step < warmup_steps)
    return peak * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const std::int64_t decay_steps = std::max<std::int64_t>(1, total_steps - warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  return floor + (peak - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

std::int64_t batch_ramp::at(std::int64_t step) const {
  if (steps <= 0 || step >= steps) return full;
  const std::int64_t count = start + (full - start) * step / steps;
  return std::max(start, count / multiple * multiple);
}

}  // namespace troupe
