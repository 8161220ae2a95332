#pragma once

// MLA's attention over the paged latent cache on a CUDA device (inference), the contract of
// kernels/cpu/latent_attention.hpp with the rows of a step described per row: new row r belongs
// to sequence row_sequence[r] and sits at position row_position[r]. Every pointer, the cache's
// block tables included, is device memory; `stream` is a cudaStream_t.

#include <cstdint>

#include "kernels/cpu/latent_attention.hpp"

namespace troupe::kernels::cuda {

using cpu::paged_latent;

/// Writes row r = [latent r (kv_rank values) | rope r (rope_dim values)] of each new token into
/// the cache at its sequence and position.
void latent_cache_write(const paged_latent& cache, const std::int32_t* row_sequence,
                        const std::int64_t* row_position, const float* latent, const float* rope,
                        std::int64_t rows, std::int64_t kv_rank, std::int64_t rope_dim,
                        void* stream);

/// out [rows][heads][kv_rank] = softmax(scale q' k'^T) c over positions 0..row_position[r] of
/// each row's sequence; queries [rows][heads][width]. Width up to 1,152 values.
void latent_attention(const paged_latent& cache, const std::int32_t* row_sequence,
                      const std::int64_t* row_position, const float* queries, float* out,
                      std::int64_t rows, std::int64_t heads, std::int64_t kv_rank, float scale,
                      void* stream);

/// RoPE forward with each row's position given (device memory): row r of `rows` (stride apart)
/// is at positions[r / heads]; tables [positions, dim/2] as kernels/cuda/rope.hpp.
void rope_rotate_at(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                    std::int64_t heads, const std::int64_t* positions, const float* cos_table,
                    const float* sin_table, void* stream);

}  // namespace troupe::kernels::cuda
