#include "runtime/balancer/bias_balancer.hpp"

#include <algorithm>
#include <numeric>

#include "runtime/core/error.hpp"

namespace troupe {

bias_balancer::bias_balancer(balancer_settings settings, const std::vector<std::int64_t>& layers,
                             std::int64_t experts)
    : settings_(settings), experts_(experts) {
  for (std::int64_t layer : layers) biases_[layer].assign(static_cast<std::size_t>(experts), 0.0f);
}

void bias_balancer::update(const expert_load& load) {
  for (const auto& [layer, counts] : load) {
    auto it = biases_.find(layer);
    if (it == biases_.end()) fail("bias balancer: layer {} has no routed experts", layer);
    if (static_cast<std::int64_t>(counts.size()) != experts_)
      fail("bias balancer: layer {} reports {} expert counts, the model has {} experts", layer,
           counts.size(), experts_);
    std::vector<float>& bias = it->second;
    const double total =
        static_cast<double>(std::accumulate(counts.begin(), counts.end(), std::int64_t{0}));
    const double mean = total / static_cast<double>(experts_);
    // The update is done in float, the biases' dtype in the router, in a fixed order.
    const float step = static_cast<float>(settings_.gamma);
    for (std::size_t i = 0; i < bias.size(); ++i) {
      const double c = static_cast<double>(counts[i]);
      bias[i] += c < mean ? step : (c > mean ? -step : 0.0f);
    }
    if (settings_.recenter) {
      double sum = 0.0;
      for (float b : bias) sum += static_cast<double>(b);
      const float shift = static_cast<float>(sum / static_cast<double>(bias.size()));
      for (float& b : bias) b -= shift;
    }
  }
}

void bias_balancer::set_biases(const std::map<std::int64_t, std::vector<float>>& biases) {
  for (const auto& [layer, values] : biases) {
    auto it = biases_.find(layer);
    if (it == biases_.end() || values.size() != it->second.size())
      fail("bias balancer: saved biases of layer {} do not fit the model ({} experts)", layer,
           experts_);
    it->second = values;
  }
}

double max_over_mean(const std::vector<std::int64_t>& load) {
  if (load.empty()) return 0.0;
  const double total =
      static_cast<double>(std::accumulate(load.begin(), load.end(), std::int64_t{0}));
  if (total <= 0.0) return 0.0;
  const double peak = static_cast<double>(*std::max_element(load.begin(), load.end()));
  return peak / (total / static_cast<double>(load.size()));
}

}  // namespace troupe
