#pragma once

// Filling a parameter with counter_random's normals, vectorised: the start of every job draws
// every parameter this way (runtime/model/parameter_store.cpp).

#include <cstdint>

#include "kernels/cpu/counter_random.hpp"

namespace troupe::kernels::cpu {

/// out[2k] and out[2k + 1] = random.normal_pair(k, scale) for k in [first, last); `out` holds `n`
/// values, so an odd n drops the second value of pair n / 2. The bits do not depend on how
/// [0, pairs) is cut into calls.
void fill_normal_pairs(const counter_random& random, std::int64_t first, std::int64_t last,
                       float scale, float* out, std::int64_t n);

}  // namespace troupe::kernels::cpu
