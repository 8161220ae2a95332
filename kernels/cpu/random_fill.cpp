#include "kernels/cpu/random_fill.hpp"

#include <algorithm>

namespace troupe::kernels::cpu {

TROUPE_WIDE_CLONES
void fill_normal_pairs(const counter_random& random, std::int64_t first, std::int64_t last,
                       float scale, float* out, std::int64_t n) {
  const std::int64_t whole = std::min(last, n / 2);  // pairs with both values in `out`
  for (std::int64_t k = first; k < whole; ++k) {
    float a = 0.0f, b = 0.0f;
    random.normal_pair(static_cast<std::uint64_t>(k), scale, a, b);
    out[2 * k] = a;
    out[2 * k + 1] = b;
  }
  for (std::int64_t k = std::max(first, whole); k < last; ++k) {  // the odd element's pair
    float a = 0.0f, b = 0.0f;
    random.normal_pair(static_cast<std::uint64_t>(k), scale, a, b);
    out[2 * k] = a;
  }
}

}  // namespace troupe::kernels::cpu
