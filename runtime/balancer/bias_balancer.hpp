#pragma once

// DeepSeek-V3's auxiliary-loss-free load balancing: after each global batch, every routed
// expert's selection bias moves by a fixed step towards balance,
//   b_i += gamma * sign(mean_load - load_i),
// where load_i counts the tokens routed to expert i in that batch over every micro-batch,
// pipeline copy and data-parallel replica. Optionally each layer's biases are shifted back to zero
// mean afterwards (they only rank experts, so a common offset changes nothing).

#include <cstdint>
#include <map>
#include <vector>

namespace troupe {

/// The topology's [balancer] settings (their defaults: runtime/topology/schema.cpp).
struct balancer_settings {
  double gamma = 0.0;
  bool recenter = false;
};

/// Per MoE layer: tokens routed to each expert in one step.
using expert_load = std::map<std::int64_t, std::vector<std::int64_t>>;

class bias_balancer {
 public:
  /// `experts` routed experts in each of `layers` (decoder and MTP MoE layers), biases at 0.
  bias_balancer(balancer_settings settings, const std::vector<std::int64_t>& layers,
                std::int64_t experts);

  /// One update from a step's load; throws troupe::error for an unknown layer or a count vector
  /// of the wrong length.
  void update(const expert_load& load);

  const std::map<std::int64_t, std::vector<float>>& biases() const { return biases_; }
  /// Restores biases (a checkpoint); the layers and lengths must match.
  void set_biases(const std::map<std::int64_t, std::vector<float>>& biases);

 private:
  balancer_settings settings_;
  std::int64_t experts_;
  std::map<std::int64_t, std::vector<float>> biases_;
};

/// max_i load_i / mean load of one layer (1 when balanced; 0 with no tokens).
double max_over_mean(const std::vector<std::int64_t>& load);

}  // namespace troupe
