#include "kernels/cpu/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/vector_math.hpp"

namespace troupe::kernels::cpu {

namespace {

// NOTES: the products run over blocks of `block` query rows, each against the keys it can see
// (those up to its last row), so the masked upper triangle is neither multiplied nor stored:
// 5/8 of the full products at 512 tokens. Row blocks of 128 keep the GEMMs large enough to run
// near the GEMM kernels' peak; dK and dV go by blocks of key columns against the rows below.
constexpr std::int64_t block = 128;

/// Rows [first, first + rows) of scores = scale * Q K^T against the keys they see, at ld length.
void block_scores(const attention_shape& s, std::int64_t first, std::int64_t rows, const float* q,
                  const float* k, float* scores) {
  sgemm({false, true, rows, first + rows, s.qk_dim, s.ldq, s.ldk, s.length}, s.scale,
        q + first * s.ldq, k, 0.0f, scores + first * s.length);
}

}  // namespace

void causal_attention_forward(const attention_shape& s, const float* q, const float* k,
                              const float* v, float* o, float* lse, float* scratch) {
  const std::int64_t n = s.length;
  float* p = scratch;
  for (std::int64_t first = 0; first < n; first += block) {
    const std::int64_t rows = std::min(block, n - first), visible = first + rows;
    block_scores(s, first, rows, q, k, p);
    for (std::int64_t i = first; i < visible; ++i) {
      float* row = p + i * n;
      float max_score = -std::numeric_limits<float>::infinity();
      // NOTES: not std::fmax, a libm call per element here; the same where a score is NaN.
      for (std::int64_t j = 0; j <= i; ++j) max_score = row[j] > max_score ? row[j] : max_score;
      exp_shifted(row, i + 1, max_score);
      float sum = 0.0f;
      for (std::int64_t j = 0; j <= i; ++j) sum += row[j];
      const float inverse = 1.0f / sum;
      for (std::int64_t j = 0; j <= i; ++j) row[j] *= inverse;
      for (std::int64_t j = i + 1; j < visible; ++j) row[j] = 0.0f;
      lse[i] = max_score + std::log(sum);
    }
    sgemm({false, false, rows, s.v_dim, visible, n, s.ldv, s.ldo}, 1.0f, p + first * n, v, 0.0f,
          o + first * s.ldo);
  }
}

void causal_attention_backward(const attention_shape& s, const float* q, const float* k,
                               const float* v, const float* o, const float* d_o, const float* lse,
                               float* dq, float* dk, float* dv, float* scratch) {
  const std::int64_t n = s.length;
  float* p = scratch;
  float* dp = scratch + n * n;
  for (std::int64_t first = 0; first < n; first += block) {
    const std::int64_t rows = std::min(block, n - first), visible = first + rows;
    block_scores(s, first, rows, q, k, p);
    // dP = dO V^T over the same visible keys.
    sgemm({false, true, rows, visible, s.v_dim, s.ldo, s.ldv, n}, 1.0f, d_o + first * s.ldo, v,
          0.0f, dp + first * n);
    // dScores = P * (dP - rowsum(dO * O)); the scale goes into dQ and dK.
    for (std::int64_t i = first; i < visible; ++i) {
      float* row = p + i * n;
      exp_shifted(row, i + 1, lse[i]);
      double dot = 0.0;
      for (std::int64_t c = 0; c < s.v_dim; ++c)
        dot += static_cast<double>(d_o[i * s.ldo + c]) * static_cast<double>(o[i * s.ldo + c]);
      const auto delta = static_cast<float>(dot);
      float* dp_row = dp + i * n;
      for (std::int64_t j = 0; j <= i; ++j) dp_row[j] = row[j] * (dp_row[j] - delta);
      for (std::int64_t j = i + 1; j < visible; ++j) row[j] = dp_row[j] = 0.0f;
    }
    sgemm({false, false, rows, s.qk_dim, visible, n, s.ldk, s.ldq}, s.scale, dp + first * n, k,
          0.0f, dq + first * s.ldq);
  }
  // dV = P^T dO and dK = scale * dScores^T Q, a block of key columns against the rows that see it.
  for (std::int64_t first = 0; first < n; first += block) {
    const std::int64_t columns = std::min(block, n - first), below = n - first;
    sgemm({true, false, columns, s.v_dim, below, n, s.ldo, s.ldv}, 1.0f, p + first * n + first,
          d_o + first * s.ldo, 0.0f, dv + first * s.ldv);
    sgemm({true, false, columns, s.qk_dim, below, n, s.ldq, s.ldk}, s.scale, dp + first * n + first,
          q + first * s.ldq, 0.0f, dk + first * s.ldk);
  }
}

}  // namespace troupe::kernels::cpu
