#pragma once

// Causal softmax attention of one sequence and one head, with its backward, llm.c style.
//   scores = scale * Q K^T (row i sees columns j <= i), P = softmax(scores), O = P V
// Forward keeps only the per-row log-sum-exp; backward recomputes P from it (FlashAttention's
// trade), so no [length, length] matrix outlives a call. The products go through sgemm: in
// DeepSeek-V3's recipe only Linear layers run in FP8, attention's products stay in high precision.

#include <cstdint>

namespace troupe::kernels::cpu {

struct attention_shape {
  std::int64_t length = 0;                          ///< tokens of the sequence (queries and keys)
  std::int64_t qk_dim = 0;                          ///< width of a query and a key
  std::int64_t v_dim = 0;                           ///< width of a value and an output row
  std::int64_t ldq = 0, ldk = 0, ldv = 0, ldo = 0;  ///< row strides (elements)
  float scale = 1.0f;
};

/// Scratch floats the calls need (one [length, length] for forward, two for backward).
inline std::int64_t attention_forward_scratch(std::int64_t length) {
  return length * length;
}
inline std::int64_t attention_backward_scratch(std::int64_t length) {
  return 2 * length * length;
}

/// O (overwritten) and lse[length] from Q, K, V.
void causal_attention_forward(const attention_shape& shape, const float* q, const float* k,
                              const float* v, float* o, float* lse, float* scratch);

/// dQ, dK, dV (overwritten; strides ldq, ldk, ldv) from dO (stride ldo), with O and lse from
/// forward.
void causal_attention_backward(const attention_shape& shape, const float* q, const float* k,
                               const float* v, const float* o, const float* d_o, const float* lse,
                               float* dq, float* dk, float* dv, float* scratch);

}  // namespace troupe::kernels::cpu
