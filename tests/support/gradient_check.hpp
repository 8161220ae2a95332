#pragma once

// Finite-difference checks of hand-written backward passes, in FP32 with stated tolerances.
//
// For a scalar loss L and a variable x with analytic gradient g, the directional derivative
// along a unit vector v, (L(x + eps v) - L(x - eps v)) / (2 eps), must equal <g, v> to within
// `tolerance * |g|`. Two directions are checked per variable: g itself (the magnitude) and a
// random one (the direction). With eps = 1e-2 on unit v the central difference's truncation error
// is ~1e-4 |g| and FP32 rounding of L adds ~1e-7 |L| / eps, so tolerance 2e-3 leaves a margin
// while catching any wrong term (those are O(|g|)). A variable whose analytic gradient is zero
// must leave the loss unchanged when perturbed.

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace troupe::testing {

struct gradient_variable {
  std::string name;
  float* value;             ///< perturbed in place (restored afterwards)
  std::vector<float> grad;  ///< the analytic gradient
};

inline void expect_gradients_match(const std::function<double()>& loss,
                                   std::vector<gradient_variable> variables, double eps = 1e-2,
                                   double tolerance = 2e-3, std::uint32_t seed = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  for (auto& variable : variables) {
    const std::size_t n = variable.grad.size();
    double norm = 0.0;
    for (float g : variable.grad) norm += static_cast<double>(g) * static_cast<double>(g);
    norm = std::sqrt(norm);
    if (norm == 0.0) {
      // A parameter that got no gradient (an expert no token reached): the loss must not move.
      std::vector<float> original(variable.value, variable.value + n);
      for (std::size_t i = 0; i < n; ++i)
        variable.value[i] =
            static_cast<float>(static_cast<double>(original[i]) +
                               eps * normal(rng) / std::sqrt(static_cast<double>(n)));
      const double moved = loss();
      std::copy(original.begin(), original.end(), variable.value);
      EXPECT_NEAR(moved, loss(), 1e-6 * (1.0 + std::fabs(moved)))
          << variable.name << " has a zero gradient but moves the loss";
      continue;
    }
    std::vector<std::vector<double>> directions(2, std::vector<double>(n));
    for (std::size_t i = 0; i < n; ++i)
      directions[0][i] = static_cast<double>(variable.grad[i]) / norm;
    double random_norm = 0.0;
    for (auto& value : directions[1]) {
      value = normal(rng);
      random_norm += value * value;
    }
    for (auto& value : directions[1]) value /= std::sqrt(random_norm);
    for (std::size_t d = 0; d < directions.size(); ++d) {
      const auto& v = directions[d];
      std::vector<float> original(variable.value, variable.value + n);
      auto shift = [&](double step) {
        for (std::size_t i = 0; i < n; ++i)
          variable.value[i] = static_cast<float>(static_cast<double>(original[i]) + step * v[i]);
      };
      shift(eps);
      const double plus = loss();
      shift(-eps);
      const double minus = loss();
      std::copy(original.begin(), original.end(), variable.value);
      const double numeric = (plus - minus) / (2.0 * eps);
      double analytic = 0.0;
      for (std::size_t i = 0; i < n; ++i) analytic += static_cast<double>(variable.grad[i]) * v[i];
      EXPECT_NEAR(numeric, analytic, tolerance * norm)
          << variable.name << " along " << (d == 0 ? "its gradient" : "a random direction")
          << " (|g| = " << norm << ")";
    }
  }
}

}  // namespace troupe::testing
