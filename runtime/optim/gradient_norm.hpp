#pragma once

// The pieces of the global gradient norm. Each holder of parameters sums the squares of the
// gradients it alone holds (float64, in parameter order, so the sum does not depend on the
// thread count); the coordinator adds those sums and the squares of the replicated gradients it
// reduces itself, then clips every holder's update by the same factor.

#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/model/parameter_store.hpp"

namespace troupe {

class exec_context;

/// A holder's part of the global gradient norm.
struct gradient_summary {
  double norm_squared = 0.0;  ///< sum of squares, accumulated in double in parameter order
  std::string non_finite;     ///< the first parameter whose gradient is not finite
  auto fields() { return std::tie(norm_squared, non_finite); }
};

/// Adds the squared gradients of the trainable `parameters` not in `skip` to `summary` (float64,
/// in order), and names the first non-finite gradient of any. With the GPU `context` whose layers
/// wrote the gradients, a gradient whose layer reported its sum of squares in this gradient
/// generation (runtime/exec/gradient_squares.hpp) is taken from that sum instead of read.
void add_gradients(const std::vector<parameter*>& parameters, const std::set<std::string>& skip,
                   gradient_summary& summary, const exec_context* context = nullptr);

}  // namespace troupe
