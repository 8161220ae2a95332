#include "kernels/cpu/attention.hpp"

#include <cmath>
#include <limits>

#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/vector_math.hpp"

namespace troupe::kernels::cpu {

namespace {

/// scores[L, L] = scale * Q K^T.
void scores_of(const attention_shape& s, const float* q, const float* k, float* scores) {
  sgemm({false, true, s.length, s.length, s.qk_dim, s.ldq, s.ldk, s.length}, s.scale, q, k, 0.0f,
        scores);
}

}  // namespace

void causal_attention_forward(const attention_shape& s, const float* q, const float* k,
                              const float* v, float* o, float* lse, float* scratch) {
  const std::int64_t n = s.length;
  float* p = scratch;
  scores_of(s, q, k, p);
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = p + i * n;
    float max_score = -std::numeric_limits<float>::infinity();
    // NOTES: not std::fmax, a libm call per element here; the same where a score is NaN.
    for (std::int64_t j = 0; j <= i; ++j) max_score = row[j] > max_score ? row[j] : max_score;
    exp_shifted(row, i + 1, max_score);
    float sum = 0.0f;
    for (std::int64_t j = 0; j <= i; ++j) sum += row[j];
    const float inverse = 1.0f / sum;
    for (std::int64_t j = 0; j <= i; ++j) row[j] *= inverse;
    for (std::int64_t j = i + 1; j < n; ++j) row[j] = 0.0f;
    lse[i] = max_score + std::log(sum);
  }
  sgemm({false, false, n, s.v_dim, n, n, s.ldv, s.ldo}, 1.0f, p, v, 0.0f, o);
}

void causal_attention_backward(const attention_shape& s, const float* q, const float* k,
                               const float* v, const float* o, const float* d_o, const float* lse,
                               float* dq, float* dk, float* dv, float* scratch) {
  const std::int64_t n = s.length;
  float* p = scratch;
  float* dp = scratch + n * n;
  scores_of(s, q, k, p);
  for (std::int64_t i = 0; i < n; ++i) {
    float* row = p + i * n;
    exp_shifted(row, i + 1, lse[i]);
    for (std::int64_t j = i + 1; j < n; ++j) row[j] = 0.0f;
  }
  // dV = P^T dO ; dP = dO V^T
  sgemm({true, false, n, s.v_dim, n, n, s.ldo, s.ldv}, 1.0f, p, d_o, 0.0f, dv);
  sgemm({false, true, n, n, s.v_dim, s.ldo, s.ldv, n}, 1.0f, d_o, v, 0.0f, dp);
  // dScores = P * (dP - rowsum(dO * O)), then the scale goes into dQ and dK.
  for (std::int64_t i = 0; i < n; ++i) {
    double dot = 0.0;
    for (std::int64_t c = 0; c < s.v_dim; ++c)
      dot += static_cast<double>(d_o[i * s.ldo + c]) * static_cast<double>(o[i * s.ldo + c]);
    const auto delta = static_cast<float>(dot);
    float* dp_row = dp + i * n;
    const float* p_row = p + i * n;
    for (std::int64_t j = 0; j <= i; ++j) dp_row[j] = p_row[j] * (dp_row[j] - delta);
    for (std::int64_t j = i + 1; j < n; ++j) dp_row[j] = 0.0f;
  }
  sgemm({false, false, n, s.qk_dim, n, n, s.ldk, s.ldq}, s.scale, dp, k, 0.0f, dq);
  sgemm({true, false, n, s.qk_dim, n, n, s.ldq, s.ldk}, s.scale, dp, q, 0.0f, dk);
}

}  // namespace troupe::kernels::cpu
