#pragma once

// Parameters of order 1 for gradient checks: initialisation scale 0.02 leaves activations so
// small that attention is uniform and routing arbitrary, and the checks would prove little.

#include <cmath>
#include <cstdint>
#include <random>

#include "runtime/model/parameter_store.hpp"

namespace troupe::testing {

/// Matrices N(0, 1/fan_in), vectors (norm weights) 1 + N(0, 0.1^2), buffers (router bias) U(0,
/// 0.1).
inline void randomize(parameter_store& store, std::uint32_t seed) {
  std::mt19937 rng(seed);
  for (parameter* p : store.all()) {
    float* v = p->value.data_as<float>();
    const std::int64_t n = p->value.numel();
    if (p->spec.buffer()) {
      std::uniform_real_distribution<float> uniform(0.0f, 0.1f);
      for (std::int64_t i = 0; i < n; ++i) v[i] = uniform(rng);
    } else if (p->value.dim() == 1) {
      std::normal_distribution<float> normal(1.0f, 0.1f);
      for (std::int64_t i = 0; i < n; ++i) v[i] = normal(rng);
    } else {
      std::normal_distribution<float> normal(
          0.0f, 1.0f / std::sqrt(static_cast<float>(p->value.size(-1))));
      for (std::int64_t i = 0; i < n; ++i) v[i] = normal(rng);
    }
  }
}

}  // namespace troupe::testing
