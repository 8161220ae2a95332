#include "kernels/cpu/cross_entropy.hpp"

#include <cmath>
#include <limits>

#include "kernels/cpu/vector_math.hpp"

namespace troupe::kernels::cpu {

namespace {

float max_of(const float* row, std::int64_t vocab) {
  float max_logit = -std::numeric_limits<float>::infinity();
  for (std::int64_t v = 0; v < vocab; ++v)  // not std::fmax: a libm call per element
    max_logit = row[v] > max_logit ? row[v] : max_logit;
  return max_logit;
}

/// log(sum(exp(row))), the terms through vector_exp (within 2 ulp) and summed in double.
double logsumexp(const float* row, std::int64_t vocab) {
  const float max_logit = max_of(row, vocab);
  return static_cast<double>(max_logit) + std::log(sum_exp_shifted(row, vocab, max_logit));
}

}  // namespace

double cross_entropy_forward(const float* logits, const std::int32_t* targets, std::int64_t rows,
                             std::int64_t vocab, float* losses, std::int64_t* labelled) {
  double total = 0.0;
  std::int64_t count = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    double loss = 0.0;
    if (targets[r] >= 0) {
      loss = logsumexp(row, vocab) - static_cast<double>(row[targets[r]]);
      total += loss;
      ++count;
    }
    if (losses != nullptr) losses[r] = static_cast<float>(loss);
  }
  if (labelled != nullptr) *labelled = count;
  return total;
}

void cross_entropy_backward(const float* logits, const std::int32_t* targets, std::int64_t rows,
                            std::int64_t vocab, float scale, float* dlogits) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = logits + r * vocab;
    float* d = dlogits + r * vocab;
    if (targets[r] < 0) {
      for (std::int64_t v = 0; v < vocab; ++v) d[v] = 0.0f;
      continue;
    }
    // NOTES: one pass of exponentials (vectorised) into d, then normalised: softmax * scale.
    const double sum = exp_shifted_sum(row, d, vocab, max_of(row, vocab));
    const auto factor = static_cast<float>(static_cast<double>(scale) / sum);
    for (std::int64_t v = 0; v < vocab; ++v) d[v] *= factor;
    d[targets[r]] -= scale;
  }
}

}  // namespace troupe::kernels::cpu
