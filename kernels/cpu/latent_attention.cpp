#include "kernels/cpu/latent_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/convert.hpp"
#include "kernels/cpu/gemm.hpp"

namespace troupe::kernels::cpu {

namespace {

/// The first element of a row, in elements of the cache's type.
std::int64_t row_element(const paged_latent& cache, std::int64_t sequence, std::int64_t position) {
  const std::int32_t block =
      cache.block_tables[sequence * cache.max_blocks + position / cache.block_tokens];
  return block * cache.block_stride + cache.layer_offset +
         (position % cache.block_tokens) * cache.width;
}

}  // namespace

void latent_cache_write(const paged_latent& cache, std::int64_t sequence, std::int64_t first,
                        const float* latent, const float* rope, std::int64_t rows,
                        std::int64_t kv_rank, std::int64_t rope_dim) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t at = row_element(cache, sequence, first + r);
    if (cache.bf16) {
      auto* out = static_cast<std::uint16_t*>(cache.pool) + at;
      f32_to_bf16(latent + r * kv_rank, out, kv_rank);
      f32_to_bf16(rope + r * rope_dim, out + kv_rank, rope_dim);
    } else {
      float* out = static_cast<float*>(cache.pool) + at;
      std::memcpy(out, latent + r * kv_rank, static_cast<std::size_t>(kv_rank) * sizeof(float));
      std::memcpy(out + kv_rank, rope + r * rope_dim,
                  static_cast<std::size_t>(rope_dim) * sizeof(float));
    }
  }
}

void latent_cache_gather(const paged_latent& cache, std::int64_t sequence, std::int64_t count,
                         float* out) {
  // A block's rows of one layer are contiguous: one copy per block.
  for (std::int64_t p = 0; p < count; p += cache.block_tokens) {
    const std::int64_t n = std::min(cache.block_tokens, count - p);
    const std::int64_t at = row_element(cache, sequence, p);
    if (cache.bf16)
      bf16_to_f32(static_cast<const std::uint16_t*>(cache.pool) + at, out + p * cache.width,
                  n * cache.width);
    else
      std::memcpy(out + p * cache.width, static_cast<const float*>(cache.pool) + at,
                  static_cast<std::size_t>(n * cache.width) * sizeof(float));
  }
}

std::int64_t latent_attention_scratch(std::int64_t rows, std::int64_t keys) {
  return rows * keys;
}

void latent_attention_rows(const float* queries, std::int64_t q_stride, const float* keys,
                           std::int64_t offset, std::int64_t rows, std::int64_t width,
                           std::int64_t kv_rank, float scale, float* out, std::int64_t out_stride,
                           float* scratch) {
  const std::int64_t visible = offset + rows;  // keys the last row sees
  float* scores = scratch;                     // [rows][visible]
  sgemm({false, true, rows, visible, width, q_stride, width, visible}, scale, queries, keys, 0.0f,
        scores);
  for (std::int64_t i = 0; i < rows; ++i) {
    float* row = scores + i * visible;
    const std::int64_t seen = offset + i + 1;
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
  // The values are the latents: the first kv_rank columns of the keys.
  sgemm({false, false, rows, kv_rank, visible, visible, width, out_stride}, 1.0f, scores, keys,
        0.0f, out);
}

}  // namespace troupe::kernels::cpu
