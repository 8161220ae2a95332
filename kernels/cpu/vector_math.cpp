#include "kernels/cpu/vector_math.hpp"

namespace troupe::kernels::cpu {

TROUPE_WIDE_CLONES
void exp_shifted(float* values, std::int64_t count, float shift) {
  for (std::int64_t i = 0; i < count; ++i) values[i] = vector_exp(values[i] - shift);
}

}  // namespace troupe::kernels::cpu
