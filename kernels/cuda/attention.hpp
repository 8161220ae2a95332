#pragma once

// Causal softmax attention on a CUDA device, forward and backward, for a batch of sequences and
// heads at once, in the flash style: forward keeps only the per-row log-sum-exp, backward
// recomputes the probabilities tile by tile, so memory grows linearly with the sequence (no
// [length, length] matrix ever exists). The same contract as kernels/cpu/attention.hpp:
//   scores = scale * Q K^T (row i sees keys j <= i), P = softmax(scores), O = P V.
// DeepSeek's shapes: queries and keys qk_dim wide (nope + rope), values v_dim, each up to 256.
// A key's last rope_dim columns may come from a separate tensor: MLA's decoupled rope key,
// shared by every head (head stride 0), so the keys are never assembled in memory; its gradient
// goes to a per-head tensor the caller sums over heads. FP32 throughout (the parity path), or
// BF16 on the tensor cores (the _bf16 functions below).
// Device pointers; `stream` is a cudaStream_t.

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda {

/// A [batch, heads, rows, columns] operand given by its strides (elements).
struct attention_operand {
  const float* data = nullptr;
  std::int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
};
struct attention_result {
  float* data = nullptr;
  std::int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
};

struct attention_problem {
  std::int64_t batch = 0, heads = 0, length = 0;
  std::int64_t qk_dim = 0;    ///< width of a query and of a whole key (<= 256)
  std::int64_t rope_dim = 0;  ///< the key's last rope_dim columns come from key_rope (0: none)
  std::int64_t v_dim = 0;     ///< width of a value and an output row (<= 256)
  float scale = 1.0f;
};

inline constexpr std::int64_t max_attention_head_dim = 256;

/// o and lse [batch, heads, length] (contiguous) from q, k (its first qk_dim - rope_dim
/// columns), key_rope (the rest) and v.
void attention_forward(const attention_problem& problem, attention_operand q, attention_operand k,
                       attention_operand key_rope, attention_operand v, attention_result o,
                       float* lse, void* stream);

/// Floats of scratch attention_backward needs (one per query row).
std::int64_t attention_backward_scratch(const attention_problem& problem);

/// dq, dk (first qk_dim - rope_dim columns), d_key_rope (the rope columns, per head: the caller
/// sums them over heads when the rope key is shared) and dv, all overwritten.
void attention_backward(const attention_problem& problem, attention_operand q, attention_operand k,
                        attention_operand key_rope, attention_operand v, attention_operand o,
                        attention_operand d_o, const float* lse, attention_result dq,
                        attention_result dk, attention_result d_key_rope, attention_result dv,
                        float* scratch, void* stream);

/// The same attention with BF16 products on the tensor cores (model.precision = "bf16";
/// attention_bf16.cu): Q, K, V and dO rounded to BF16 once per call, the probabilities and
/// their gradients rounded to BF16 for the products that take them; scores, softmax, lse and every
/// accumulation in FP32; the same operands, results and scratch as above. Head sizes the kernels
/// are built for (qk / v: 32 / 16, 96 / 64, 128 / 128, 192 / 128) run there; any other runs the
/// FP32 kernels. `staging` (device memory, attention_bf16_staging_bytes) holds the BF16 copies;
/// null: the call takes it from CUDA's stream-ordered allocator.
bool attention_bf16_supported(const attention_problem& problem);
std::size_t attention_bf16_staging_bytes(const attention_problem& problem, bool backward);
void attention_forward_bf16(const attention_problem& problem, attention_operand q,
                            attention_operand k, attention_operand key_rope, attention_operand v,
                            attention_result o, float* lse, void* stream, void* staging = nullptr);
void attention_backward_bf16(const attention_problem& problem, attention_operand q,
                             attention_operand k, attention_operand key_rope, attention_operand v,
                             attention_operand o, attention_operand d_o, const float* lse,
                             attention_result dq, attention_result dk, attention_result d_key_rope,
                             attention_result dv, float* scratch, void* stream,
                             void* staging = nullptr);

}  // namespace troupe::kernels::cuda
