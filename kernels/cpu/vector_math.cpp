#include "kernels/cpu/vector_math.hpp"

namespace troupe::kernels::cpu {

TROUPE_WIDE_CLONES
void exp_shifted(float* values, std::int64_t count, float shift) {
  for (std::int64_t i = 0; i < count; ++i) values[i] = vector_exp(values[i] - shift);
}

namespace {
constexpr int lanes = 16;

double total(const double (&partial)[lanes]) {
  double sum = 0.0;
  for (const double p : partial) sum += p;
  return sum;
}
}  // namespace

TROUPE_WIDE_CLONES
double exp_shifted_sum(const float* values, float* out, std::int64_t count, float shift) {
  double partial[lanes] = {};
  std::int64_t i = 0;
  for (; i + lanes <= count; i += lanes)
    for (int j = 0; j < lanes; ++j) {
      out[i + j] = vector_exp(values[i + j] - shift);
      partial[j] += static_cast<double>(out[i + j]);
    }
  for (; i < count; ++i) {
    out[i] = vector_exp(values[i] - shift);
    partial[0] += static_cast<double>(out[i]);
  }
  return total(partial);
}

TROUPE_WIDE_CLONES
double sum_exp_shifted(const float* values, std::int64_t count, float shift) {
  double partial[lanes] = {};
  std::int64_t i = 0;
  for (; i + lanes <= count; i += lanes)
    for (int j = 0; j < lanes; ++j)
      partial[j] += static_cast<double>(vector_exp(values[i + j] - shift));
  for (; i < count; ++i) partial[0] += static_cast<double>(vector_exp(values[i] - shift));
  return total(partial);
}

}  // namespace troupe::kernels::cpu
