#include "kernels/cpu/random_fill.hpp"

#include <algorithm>

namespace troupe::kernels::cpu {

// NOTES: SplitMix64's 64-bit multiplies vectorise only with AVX-512DQ (vpmullq), hence a clone for
// x86-64-v4 (AVX-512 F, BW, CD, DQ, VL) rather than TROUPE_WIDE_CLONES' plain AVX-512F; elsewhere
// the loop stays scalar. Built without FMA contraction (meson.build), so both clones, and the
// vector body and its scalar remainder, give the same bits: 216.5M values in 0.12 s on two cores
// instead of 1.0 s through libm.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v4", "default")))
#endif
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
