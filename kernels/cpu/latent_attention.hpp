#pragma once

// MLA's attention over the paged latent cache on the host (inference). The cache keeps per token
// the normalised kv latent c (kv_lora_rank values) and the rotated rope key r; the queries come
// absorbed, q' = [q_nope W_UK, q_rope] per head, so a score is q' . [c, r] and the output is
// the softmax-weighted sum of the latents c (the caller applies W_UV). A new token at position p
// sees positions 0..p.

#include <cstdint>

namespace troupe::kernels::cpu {

/// One layer of the paged cache: row `position` of sequence `sequence` starts at element
/// block_tables[sequence * max_blocks + position / block_tokens] * block_stride + layer_offset +
/// (position % block_tokens) * width of `pool` (f32, or bf16 when `bf16`).
struct paged_latent {
  void* pool = nullptr;
  bool bf16 = false;
  std::int64_t width = 0, block_tokens = 0, block_stride = 0, layer_offset = 0;
  const std::int32_t* block_tables = nullptr;
  std::int32_t max_blocks = 0;
};

/// Writes `rows` rows [latent | rope] of one sequence at positions first, first + 1, ...
void latent_cache_write(const paged_latent& cache, std::int64_t sequence, std::int64_t first,
                        const float* latent, const float* rope, std::int64_t rows,
                        std::int64_t kv_rank, std::int64_t rope_dim);

/// Positions [0, count) of one sequence as f32 rows [count, width].
void latent_cache_gather(const paged_latent& cache, std::int64_t sequence, std::int64_t count,
                         float* out);

/// Scratch floats latent_attention_rows needs for `rows` query rows over `keys` positions.
std::int64_t latent_attention_scratch(std::int64_t rows, std::int64_t keys);

/// One head, `rows` consecutive new tokens whose first is at position `offset`: queries
/// [rows][width] (rows q_stride apart), keys [offset + rows][width] (gathered), out
/// [rows][kv_rank] (rows out_stride apart) = softmax(scale q' k'^T, causal) c.
void latent_attention_rows(const float* queries, std::int64_t q_stride, const float* keys,
                           std::int64_t offset, std::int64_t rows, std::int64_t width,
                           std::int64_t kv_rank, float scale, float* out, std::int64_t out_stride,
                           float* scratch);

}  // namespace troupe::kernels::cpu
