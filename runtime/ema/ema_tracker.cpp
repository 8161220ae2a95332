#include "runtime/ema/ema_tracker.hpp"

#include "runtime/core/error.hpp"

namespace troupe {

ema_tracker::ema_tracker(double decay) : decay_(decay) {
  if (!(decay >= 0.0 && decay < 1.0)) fail("ema decay must be in [0, 1), got {}", decay);
}

void ema_tracker::update(const std::vector<std::pair<std::string, tensor>>& snapshot,
                         const std::vector<std::pair<std::string, tensor>>& buffers) {
  for (const auto& [name, value] : buffers) average_.insert_or_assign(name, value.clone());
  const float keep = static_cast<float>(decay_), take = static_cast<float>(1.0 - decay_);
  for (const auto& [name, value] : snapshot) {
    auto it = average_.find(name);
    if (it == average_.end()) {
      average_.emplace(name, value.clone());
      continue;
    }
    if (it->second.shape() != value.shape())
      fail("ema: snapshot of {} is {}, the average is {}", name, value.describe(),
           it->second.describe());
    float* average = it->second.data_as<float>();
    const float* w = value.data_as<const float>();
    const std::int64_t n = value.numel();
    for (std::int64_t i = 0; i < n; ++i) average[i] = keep * average[i] + take * w[i];
  }
  ++updates_;
}

std::vector<std::pair<std::string, tensor>> ema_tracker::weights() const {
  return {average_.begin(), average_.end()};
}

void ema_tracker::load(const std::vector<std::pair<std::string, tensor>>& weights) {
  average_.clear();
  for (const auto& [name, value] : weights) average_.emplace(name, value.clone());
}

}  // namespace troupe
