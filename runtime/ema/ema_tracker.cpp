#include "runtime/ema/ema_tracker.hpp"

#include <algorithm>
#include <cmath>
#include <thread>

#include "runtime/core/error.hpp"

namespace troupe {

ema_tracker::ema_tracker(double decay) : decay_(decay) {
  if (!(decay >= 0.0 && decay < 1.0)) fail("ema decay must be in [0, 1), got {}", decay);
}

void ema_tracker::update(const std::vector<std::pair<std::string, tensor>>& snapshot,
                         const std::vector<std::pair<std::string, tensor>>& buffers,
                         std::int64_t updates) {
  if (updates < 1) fail("ema: a snapshot stands for {} updates; at least 1", updates);
  if (!pool_) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    pool_ = std::make_unique<thread_pool>(std::clamp(cores / 4, 1, 8));
  }
  for (const auto& [name, value] : buffers) average_.insert_or_assign(name, value.clone());
  const double decay = std::pow(decay_, static_cast<double>(updates));
  const float keep = static_cast<float>(decay), take = static_cast<float>(1.0 - decay);
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
    pool_->parallel_for(n, std::int64_t{1} << 16, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) average[i] = keep * average[i] + take * w[i];
    });
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
