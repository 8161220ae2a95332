#pragma once

// Multi-head Latent Attention (DeepSeek-V2/V3) for one layer, on the host or a GPU (the exec
// context's device: buffers and ops from plugins/common/device_ops.hpp).
//
//   q      = q_b(rmsnorm(q_a(x)))            or q_proj(x) when q_lora_rank is null
//   [c, r] = kv_a_proj_with_mqa(x)           c: kv latent [kv_lora_rank], r: rope key [rope dim]
//   [k, v] = kv_b(rmsnorm(c))                per head: k_nope [nope dim], v [v dim]
//   q_rope, r rotated (interleaved pairs; YaRN frequencies); the rope key is shared by all heads
//   o_h    = softmax(scale * (q_nope_h k_nope_h + q_rope_h r) causal) v_h,  y = o_proj(o)
//
// Two forward paths: naive (up-project k and v, as above) and absorbed (fold kv_b into the query
// and the output: attention runs in the latent space over [c, r], the inference KV-cache layout).
// Backward keeps only the latents, not the up-projections, and recomputes q, k and v.

#include <cstdint>
#include <string>
#include <vector>

#include "plugins/common/device_ops.hpp"
#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"
#include "plugins/common/split_backward.hpp"
#include "plugins/common/weight_copies.hpp"

namespace troupe::plugin {

enum class mla_path { naive, absorbed };

class mla_layer {
 public:
  mla_layer(const model_shape& config, mla_path path);

  const parameter_list& parameters() const { return parameters_; }
  troupe_status bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                     troupe_error* error);

  troupe_status forward(const troupe_exec_context* context, std::int64_t micro_batch,
                        const DLTensor& x, const DLTensor& y, troupe_error* error);
  troupe_status backward(const troupe_exec_context* context, std::int64_t micro_batch,
                         troupe_backward_part part, const DLTensor* dy, const DLTensor* dx,
                         troupe_error* error);
  void forget(std::int64_t micro_batch) { saved_.release(micro_batch); }

  /// Inference (troupe_plugin::forward_cached): the new tokens' normalised latents and rotated
  /// rope keys go into the cache at their positions, then each sequence's new tokens attend over
  /// its whole cache by the absorbed path. Nothing is saved (plugins/mla/mla_cached.cpp).
  troupe_status forward_cached(const troupe_exec_context* context, const troupe_kv_cache& cache,
                               const DLTensor& x, const DLTensor& y, troupe_error* error);

  /// {"saved_activation_bytes": ..., "recomputed_activation_bytes": ..., "micro_batches": ...}
  const std::string& statistics();

  std::int64_t hidden() const { return hidden_; }
  float softmax_scale() const { return scale_; }

 private:
  struct saved_state {
    const float* x = nullptr;  // the input, kept alive by the host (ABI contract)
    activation_shape shape;
    buffer q_latent;   // [T, q_lora_rank] before its norm (empty without q_lora)
    buffer q_rstd;     // [T]
    buffer kv_latent;  // [T, kv_lora_rank + rope]: c before its norm, then r unrotated
    buffer kv_rstd;    // [T]
    buffer attention;  // [T, heads * v_dim]: o before o_proj
    buffer lse;        // [batch, heads, length]
    // NOTES: without a q low-rank (DeepSeek-V2-Lite's shape) the queries are a full projection of
    // the input, not an up-projection of a latent: recomputing them in backward costs a GEMM of
    // hidden x heads * qk_dim per token, so they are kept (rope part rotated) instead.
    buffer q;  // [T, heads * qk_dim] (empty with q_lora)
    // Between the input-gradient and the weight-gradient parts of backward:
    buffer d_output, d_q, d_q_latent, d_kv, d_kv_latent, q_normed, kv_normed;
    // NOTES: under the runtime's BF16 GEMMs (`bf16`) each GEMM operand is rounded to BF16 once,
    // where it is made, and kept for every GEMM that reads it (the input for q or q_a, kv_a and
    // their weight gradients; o for o_proj and its weight gradient; ...) instead of being rounded
    // again in each GEMM; the weights are BF16 copies the optimizer keeps. The f32 gradients
    // d_output, d_q and d_kv are not kept then.
    bool bf16 = false;
    device_array<std::uint16_t> x16, attention16, d_output16, d_q16, d_q_latent16, d_kv16,
        d_kv_latent16, q_normed16, kv_normed16;
    std::size_t bytes() const;
  };

  struct projections {  // recomputed (or, in forward, computed once)
    buffer q_normed;    // [T, q_lora_rank]
    device_array<std::uint16_t> q_normed16, kv_normed16;  // their BF16 roundings (s.bf16)
    buffer q;                                             // [T, heads * qk_dim], rope part rotated
    buffer kv_normed;                                     // [T, kv_lora_rank]
    buffer kv;                                            // [T, heads * (nope + v)] (naive path)
    buffer rope_key;                                      // [T, rope], rotated
  };

  /// The queries (unless `queries` is false: p.q is left empty), the normalised latent, the
  /// rotated rope key, and (`up_project_kv`) the keys and values.
  troupe_status project(const troupe_exec_context* context, saved_state& s, projections& p,
                        bool up_project_kv, troupe_error* error, bool queries = true);
  attention_problem problem(const activation_shape& shape) const;
  void attend_naive(const troupe_exec_context* context, saved_state& s, const projections& p);
  void attend_absorbed(const troupe_exec_context* context, saved_state& s, const projections& p);
  troupe_status backward_input(const troupe_exec_context* context, saved_state& s, const float* dy,
                               float* dx, troupe_error* error);
  /// Attention backward per (sequence, head): dQ into s.d_q, dK_nope and dV into s.d_kv, and
  /// each head's rope-key gradient into d_rope_heads [heads, T, rope].
  void attention_backward(const troupe_exec_context* context, saved_state& s, const projections& p,
                          const buffer& d_attention, buffer& d_rope_heads);
  /// Input gradient through kv_b, the latent norm and kv_a (rope key included), added into dx.
  troupe_status kv_backward_input(const troupe_exec_context* context, saved_state& s,
                                  const buffer& d_rope_heads, float* dx, troupe_error* error);
  /// Input gradient through the query projections (q_b, its norm and q_a, or q_proj), into dx.
  troupe_status query_backward_input(const troupe_exec_context* context, saved_state& s,
                                     projections& p, float* dx, troupe_error* error);
  troupe_status backward_weight(const troupe_exec_context* context, saved_state& s,
                                troupe_error* error);
  troupe_status check_cache(const troupe_kv_cache& cache, std::int64_t rows,
                            troupe_error* error) const;

  /// A GEMM operand: f32 rows `ld` apart, and (the BF16 path) its rounding, rows contiguous.
  struct operand {
    const float* f32;
    std::int64_t ld;
    const std::uint16_t* bf16 = nullptr;
  };
  /// y[t, out] = x W^T; dx[t, in] (+)= dy W; dW[out, in] += dy^T x, for the weight parameter `w`:
  /// from the operands' BF16 roundings and W's BF16 copy where `bf16`, else through the context's
  /// GEMM provider on the f32 operands.
  troupe_status gemm_forward(const troupe_exec_context* context, bool bf16, operand x,
                             std::size_t w, float* y, std::int64_t ldy, std::int64_t t,
                             std::int64_t in, std::int64_t out, troupe_error* error);
  troupe_status gemm_input_gradient(const troupe_exec_context* context, bool bf16, operand dy,
                                    std::size_t w, float* dx, std::int64_t lddx, std::int64_t t,
                                    std::int64_t in, std::int64_t out, bool accumulate,
                                    troupe_error* error);
  troupe_status gemm_weight_gradient(const troupe_exec_context* context, bool bf16, operand dy,
                                     operand x, std::size_t w, std::int64_t t, std::int64_t in,
                                     std::int64_t out, troupe_error* error);
  /// Whether this context runs the BF16 path: the runtime's cuBLASLt BF16 provider (a GEMM
  /// plugin's, fp8, keeps its own), the naive path, every width a multiple of 8.
  bool bf16_path(const troupe_exec_context* context) const;
  /// The weights' BF16 copies, current for the context's parameter version.
  void refresh_copies(const troupe_exec_context* context);
  /// `count` BF16 roundings of x into `out` (allocated here).
  static void round_into(const troupe_exec_context* context, const float* x, std::int64_t count,
                         device_array<std::uint16_t>& out);

  // Shape.
  std::int64_t hidden_, heads_, q_rank_, kv_rank_, nope_, rope_, v_dim_, qk_dim_;
  float eps_, scale_;
  mla_path path_;
  rope_table rope_table_;
  DLDevice weights_on_{kDLCPU, 0};

  // Parameters (indices into the bound arrays).
  parameter_list parameters_;
  std::size_t q_a_, q_norm_, q_b_, q_proj_, kv_a_, kv_norm_, kv_b_, o_proj_;
  std::vector<float*> weight_, grad_;

  saved_micro_batches<saved_state> saved_;
  std::string statistics_;

  // The BF16 copies of the matrices, back to back, and each one's offset by parameter index
  // (-1: not a matrix).
  device_array<std::uint16_t> weights16_;
  std::vector<std::int64_t> offset16_;
  bf16_weight_copies copies_;  // after the copies' memory: withdraws its requests first
};

}  // namespace troupe::plugin
