// MLA's inference forward over the paged latent cache (troupe_plugin::forward_cached).
//
// NOTES: the cache holds per token what DeepSeek-V3's inference keeps: the normalised kv latent
// c (kv_lora_rank) and the rotated rope key r (qk_rope_head_dim), one row shared by all heads.
// Attention runs in the latent space (the absorbed path of mla_layer::attend_absorbed): per head
// q' = [q_nope W_UK, q_rope] against k' = [c, r], values c, and o_h = (P c) W_UV^T, so the
// up-projection kv_b never touches the cache. A new token at position p sees positions 0..p.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/convert.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/linear.hpp"
#include "plugins/mla/mla_layer.hpp"

namespace troupe::plugin {

namespace {

using kernels::linear_forward;

/// Query rows per attention task: bounds the scores scratch to 64 x context floats.
constexpr std::int64_t query_chunk = 64;

bool is_f32(DLDataType t) {
  return t.code == kDLFloat && t.bits == 32 && t.lanes == 1;
}
bool is_bf16(DLDataType t) {
  return t.code == kDLBfloat && t.bits == 16 && t.lanes == 1;
}

/// The cache row of `position` in sequence `sequence` (this layer), as bytes.
char* cache_row(const troupe_kv_cache& cache, std::int64_t sequence, std::int64_t position) {
  const std::int64_t element = is_f32(cache.dtype) ? 4 : 2;
  const std::int32_t block =
      cache.block_tables[sequence * cache.max_blocks + position / cache.block_tokens];
  const std::int64_t index = block * cache.block_stride + cache.layer_offset +
                             (position % cache.block_tokens) * cache.width;
  return static_cast<char*>(cache.pool) + index * element;
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

void mla_layer::attend_cached(const troupe_exec_context* context, const float* q, const float* keys,
                              std::int64_t first, std::int64_t count, std::int64_t context_rows,
                              float* attention) const {
  const std::int64_t width = kv_rank_ + rope_, q_stride = heads_ * qk_dim_,
                     o_stride = heads_ * v_dim_;
  const std::int64_t offset = context_rows - count;  // position of the first new row
  const std::int64_t chunks = (count + query_chunk - 1) / query_chunk;
  const float* kv_b = weight_[kv_b_];
  parallel_for(context, heads_ * chunks, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> queries(static_cast<std::size_t>(query_chunk * width));
    std::vector<float> scores(static_cast<std::size_t>(query_chunk * context_rows));
    std::vector<float> latent_out(static_cast<std::size_t>(query_chunk * kv_rank_));
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t h = task / chunks, c0 = (task % chunks) * query_chunk;
      const std::int64_t n = std::min(query_chunk, count - c0);
      const std::int64_t visible = offset + c0 + n;                // keys the chunk's last row sees
      const float* w_uk = kv_b + h * (nope_ + v_dim_) * kv_rank_;  // [nope, kv_rank]
      const float* w_uv = w_uk + nope_ * kv_rank_;                 // [v_dim, kv_rank]
      const float* q_rows = q + (first + c0) * q_stride + h * qk_dim_;
      // q' = [q_nope W_UK, q_rope]
      kernels::cpu::sgemm({false, false, n, kv_rank_, nope_, q_stride, kv_rank_, width}, 1.0f,
                          q_rows, w_uk, 0.0f, queries.data());
      for (std::int64_t i = 0; i < n; ++i)
        std::memcpy(queries.data() + i * width + kv_rank_, q_rows + i * q_stride + nope_,
                    static_cast<std::size_t>(rope_) * sizeof(float));
      kernels::cpu::sgemm({false, true, n, visible, width, width, width, visible}, scale_,
                          queries.data(), keys, 0.0f, scores.data());
      for (std::int64_t i = 0; i < n; ++i) {
        float* row = scores.data() + i * visible;
        const std::int64_t seen = offset + c0 + i + 1;
        const float top = *std::max_element(row, row + seen);
        float sum = 0.0f;
        for (std::int64_t j = 0; j < seen; ++j) {
          row[j] = std::exp(row[j] - top);
          sum += row[j];
        }
        const float inverse = 1.0f / sum;
        for (std::int64_t j = 0; j < seen; ++j) row[j] *= inverse;
        std::fill(row + seen, row + visible, 0.0f);
      }
      kernels::cpu::sgemm({false, false, n, kv_rank_, visible, visible, width, kv_rank_}, 1.0f,
                          scores.data(), keys, 0.0f, latent_out.data());
      kernels::cpu::sgemm({false, true, n, v_dim_, kv_rank_, kv_rank_, kv_rank_, o_stride}, 1.0f,
                          latent_out.data(), w_uv, 0.0f,
                          attention + (first + c0) * o_stride + h * v_dim_);
    }
  });
}

troupe_status mla_layer::forward_cached(const troupe_exec_context* context,
                                        const troupe_kv_cache& cache, const DLTensor& x,
                                        const DLTensor& y, troupe_error* error) {
  if (weight_.empty()) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward before bind");
  if (on_gpu(context))
    return fail(error, TROUPE_STATUS_UNSUPPORTED,
                "the cached (inference) forward runs on the CPU only so far");
  activation_shape shape, out_shape;
  TROUPE_TRY(check_activation(x, hidden_, "the attention input", shape, error, context));
  TROUPE_TRY(check_activation(y, hidden_, "the attention output", out_shape, error, context));
  if (out_shape.tokens() != shape.tokens())
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the output's shape differs from the input's");
  const std::int64_t t = shape.tokens();
  TROUPE_TRY(check_cache(cache, t, error));
  const std::int64_t width = kv_rank_ + rope_, q_out = heads_ * qk_dim_;
  std::vector<std::int64_t> positions;
  positions.reserve(static_cast<std::size_t>(t));
  for (std::int32_t s = 0; s < cache.num_sequences; ++s)
    for (std::int64_t j = 0; j < cache.new_tokens[s]; ++j)
      positions.push_back(cache.cached_tokens[s] + j);

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
  ops::rope_rotate_at(context, rope_key.data(), t, rope_, rope_, 1, positions.data(), rope_table_);

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
  ops::rope_rotate_at(context, q.data() + nope_, t * heads_, qk_dim_, rope_, heads_,
                      positions.data(), rope_table_);

  // Into the cache, then attention per sequence over everything it holds.
  const bool bf16 = is_bf16(cache.dtype);
  buffer attention;
  attention.allocate(context, static_cast<std::size_t>(t * heads_ * v_dim_));
  std::vector<float> keys;
  std::int64_t first = 0;
  for (std::int32_t s = 0; s < cache.num_sequences; ++s) {
    const std::int64_t cached = cache.cached_tokens[s], fresh = cache.new_tokens[s];
    for (std::int64_t j = 0; j < fresh; ++j) {
      char* row = cache_row(cache, s, cached + j);
      const float* c = kv_normed.data() + (first + j) * kv_rank_;
      const float* r = rope_key.data() + (first + j) * rope_;
      if (bf16) {
        auto* out = reinterpret_cast<std::uint16_t*>(row);
        kernels::cpu::f32_to_bf16(c, out, kv_rank_);
        kernels::cpu::f32_to_bf16(r, out + kv_rank_, rope_);
      } else {
        auto* out = reinterpret_cast<float*>(row);
        std::memcpy(out, c, static_cast<std::size_t>(kv_rank_) * sizeof(float));
        std::memcpy(out + kv_rank_, r, static_cast<std::size_t>(rope_) * sizeof(float));
      }
    }
    if (fresh == 0) continue;
    const std::int64_t context_rows = cached + fresh;
    keys.resize(static_cast<std::size_t>(context_rows * width));
    for (std::int64_t p = 0; p < context_rows; p += cache.block_tokens) {
      // A block's rows of this layer are contiguous.
      const std::int64_t n = std::min(cache.block_tokens, context_rows - p);
      const char* rows = cache_row(cache, s, p);
      if (bf16)
        kernels::cpu::bf16_to_f32(reinterpret_cast<const std::uint16_t*>(rows),
                                  keys.data() + p * width, n * width);
      else
        std::memcpy(keys.data() + p * width, rows, static_cast<std::size_t>(n * width) * 4);
    }
    attend_cached(context, q.data(), keys.data(), first, fresh, context_rows, attention.data());
    first += fresh;
  }
  return linear_forward(context, attention.data(), heads_ * v_dim_, weight_[o_proj_], data_of(y),
                        hidden_, t, heads_ * v_dim_, hidden_, false, error);
}

}  // namespace troupe::plugin
