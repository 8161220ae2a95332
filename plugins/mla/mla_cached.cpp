// MLA's inference forward over the paged latent cache (troupe_plugin::forward_cached), on the
// CPU or a GPU (kernels/dispatch/latent_ops.hpp).
//
// NOTES: the cache holds per token what DeepSeek-V3's inference keeps: the normalised kv latent
// c (kv_lora_rank) and the rotated rope key r (qk_rope_head_dim), one row shared by all heads.
// Attention runs in the latent space (the absorbed path of mla_layer::attend_absorbed): per head
// q' = [q_nope W_UK, q_rope] against k' = [c, r], values c, and o_h = (P c) W_UV^T, so the
// up-projection kv_b never touches the cache. A new token at position p sees positions 0..p.

#include <vector>

#include "kernels/cpu/linear.hpp"
#include "kernels/dispatch/latent_ops.hpp"
#include "plugins/mla/mla_layer.hpp"

namespace troupe::plugin {

namespace {

using kernels::linear_forward;

bool is_f32(DLDataType t) {
  return t.code == kDLFloat && t.bits == 32 && t.lanes == 1;
}
bool is_bf16(DLDataType t) {
  return t.code == kDLBfloat && t.bits == 16 && t.lanes == 1;
}

}  // namespace

troupe_status mla_layer::check_cache(const troupe_kv_cache& cache, std::int64_t rows,
                                     troupe_error* error) const {
  if (cache.struct_size < sizeof(troupe_kv_cache))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the cache description is {} bytes; this plugin needs {}", cache.struct_size,
                sizeof(troupe_kv_cache));
  if (cache.width != kv_rank_ + rope_)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "cache rows hold {} values; MLA keeps kv_lora_rank {} + qk_rope_head_dim {} = {}",
                cache.width, kv_rank_, rope_, kv_rank_ + rope_);
  if (!is_f32(cache.dtype) && !is_bf16(cache.dtype))
    return fail(error, TROUPE_STATUS_UNSUPPORTED, "the cache must hold f32 or bf16 values");
  if (cache.pool == nullptr || cache.block_tokens <= 0 || cache.num_sequences <= 0 ||
      cache.max_blocks <= 0 || cache.block_tables == nullptr || cache.cached_tokens == nullptr ||
      cache.new_tokens == nullptr || cache.layer_offset < 0 ||
      cache.block_stride < cache.layer_offset + cache.block_tokens * cache.width)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the cache description is incomplete (no pool, tables or counts, or blocks "
                "smaller than a layer's rows)");
  std::int64_t total = 0;
  for (std::int32_t s = 0; s < cache.num_sequences; ++s) {
    const std::int64_t cached = cache.cached_tokens[s], fresh = cache.new_tokens[s];
    if (cached < 0 || fresh < 0 || cached + fresh > cache.max_blocks * cache.block_tokens)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "sequence {}: {} cached + {} new tokens do not fit its {} blocks of {}", s,
                  cached, fresh, cache.max_blocks, cache.block_tokens);
    for (std::int64_t b = 0; b < (cached + fresh + cache.block_tokens - 1) / cache.block_tokens;
         ++b)
      if (cache.block_tables[s * cache.max_blocks + b] < 0)
        return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                    "sequence {}: block {} of its table is {} (not reserved)", s, b,
                    cache.block_tables[s * cache.max_blocks + b]);
    total += fresh;
  }
  if (total != rows)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the sequences' new tokens add up to {}, but x has {} rows", total, rows);
  return TROUPE_STATUS_OK;
}

troupe_status mla_layer::forward_cached(const troupe_exec_context* context,
                                        const troupe_kv_cache& cache, const DLTensor& x,
                                        const DLTensor& y, troupe_error* error) {
  if (weight_.empty()) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward before bind");
  activation_shape shape, out_shape;
  TROUPE_TRY(check_activation(x, hidden_, "the attention input", shape, error, context));
  TROUPE_TRY(check_activation(y, hidden_, "the attention output", out_shape, error, context));
  if (out_shape.tokens() != shape.tokens())
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the output's shape differs from the input's");
  const std::int64_t t = shape.tokens();
  TROUPE_TRY(check_cache(cache, t, error));
  const std::int64_t width = kv_rank_ + rope_, q_out = heads_ * qk_dim_;
  const kernels::latent_step step(context, cache);

  // The new tokens' latents, normalised, and their rope keys, rotated at their positions.
  buffer latent, rstd, kv_normed, rope_key;
  latent.allocate(context, static_cast<std::size_t>(t * width));
  rstd.allocate(context, static_cast<std::size_t>(t));
  kv_normed.allocate(context, static_cast<std::size_t>(t * kv_rank_));
  rope_key.allocate(context, static_cast<std::size_t>(t * rope_));
  const float* input = data_of(x);
  TROUPE_TRY(linear_forward(context, input, hidden_, weight_[kv_a_], latent.data(), width, t,
                            hidden_, width, false, error));
  ops::rmsnorm_forward(context, latent.data(), width, weight_[kv_norm_], kv_normed.data(), kv_rank_,
                       rstd.data(), t, kv_rank_, eps_);
  ops::copy_2d(context, rope_key.data(), rope_, latent.data() + kv_rank_, width, t, rope_);
  ops::rope_rotate_at(context, step, rope_key.data(), t, rope_, rope_, 1, rope_table_);

  // Queries, rope part rotated at the same positions.
  buffer q;
  q.allocate(context, static_cast<std::size_t>(t * q_out));
  if (q_rank_ > 0) {
    buffer q_latent, q_normed;
    q_latent.allocate(context, static_cast<std::size_t>(t * q_rank_));
    q_normed.allocate(context, static_cast<std::size_t>(t * q_rank_));
    TROUPE_TRY(linear_forward(context, input, hidden_, weight_[q_a_], q_latent.data(), q_rank_, t,
                              hidden_, q_rank_, false, error));
    ops::rmsnorm_forward(context, q_latent.data(), q_rank_, weight_[q_norm_], q_normed.data(),
                         q_rank_, rstd.data(), t, q_rank_, eps_);
    TROUPE_TRY(linear_forward(context, q_normed.data(), q_rank_, weight_[q_b_], q.data(), q_out, t,
                              q_rank_, q_out, false, error));
  } else {
    TROUPE_TRY(linear_forward(context, input, hidden_, weight_[q_proj_], q.data(), q_out, t,
                              hidden_, q_out, false, error));
  }
  ops::rope_rotate_at(context, step, q.data() + nope_, t * heads_, qk_dim_, rope_, heads_,
                      rope_table_);

  // Into the cache, then attention over each sequence's rows with absorbed queries:
  // q'_h = [q_nope_h W_UK_h, q_rope_h] as [t][heads][width], and o_h = latent_h W_UV_h^T.
  ops::latent_cache_write(context, step, kv_normed.data(), rope_key.data(), kv_rank_, rope_);
  const float* kv_b = weight_[kv_b_];
  buffer queries, latent_out, attention;
  queries.allocate(context, static_cast<std::size_t>(t * heads_ * width));
  latent_out.allocate(context, static_cast<std::size_t>(t * heads_ * kv_rank_));
  attention.allocate(context, static_cast<std::size_t>(t * heads_ * v_dim_));
  for (std::int64_t h = 0; h < heads_; ++h) {
    const float* w_uk = kv_b + h * (nope_ + v_dim_) * kv_rank_;  // [nope, kv_rank]
    ops::gemm_f32(context, false, false, t, kv_rank_, nope_, 1.0f, q.data() + h * qk_dim_, q_out,
                  w_uk, kv_rank_, 0.0f, queries.data() + h * width, heads_ * width);
    ops::copy_2d(context, queries.data() + h * width + kv_rank_, heads_ * width,
                 q.data() + h * qk_dim_ + nope_, q_out, t, rope_);
  }
  ops::latent_attention(context, step, queries.data(), latent_out.data(), heads_, kv_rank_, scale_);
  for (std::int64_t h = 0; h < heads_; ++h) {
    const float* w_uv = kv_b + h * (nope_ + v_dim_) * kv_rank_ + nope_ * kv_rank_;  // [v, rank]
    ops::gemm_f32(context, false, true, t, v_dim_, kv_rank_, 1.0f, latent_out.data() + h * kv_rank_,
                  heads_ * kv_rank_, w_uv, kv_rank_, 0.0f, attention.data() + h * v_dim_,
                  heads_ * v_dim_);
  }
  return linear_forward(context, attention.data(), heads_ * v_dim_, weight_[o_proj_], data_of(y),
                        hidden_, t, heads_ * v_dim_, hidden_, false, error);
}

}  // namespace troupe::plugin
