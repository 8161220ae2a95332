#pragma once

// Rotary position embedding as DeepSeek-V3 stores it: the rotary dimensions are interleaved
// pairs (x0, x1), (x2, x3), ..., pair i rotated by angle position * inv_freq[i]. YaRN changes
// only the frequencies (and, separately, the attention's softmax scale).

#include <cstdint>
#include <vector>

namespace troupe::kernels::cpu {

struct yarn_parameters {
  double factor = 1.0;
  std::int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
};

/// inv_freq[i] for i < dim/2: theta^(-2i/dim), blended towards inv_freq/factor by YaRN's ramp
/// between the dimensions that rotate beta_fast and beta_slow times in the original context.
std::vector<float> rope_inverse_frequencies(std::int64_t dim, double theta,
                                            const yarn_parameters* yarn);

/// cos and sin tables [positions, dim/2] for positions [0, positions).
void rope_tables(const std::vector<float>& inverse_frequencies, std::int64_t positions,
                 float* cos_table, float* sin_table);

/// Rotates `rows` vectors of `dim` values in place; row r sits at position positions_of(r):
/// row r of a [sequences, length, heads, ...] layout has position (r / heads) % length. `stride`
/// is the distance between rows. direction +1 forward, -1 for the backward (inverse rotation).
void rope_rotate(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                 std::int64_t heads, std::int64_t length, const float* cos_table,
                 const float* sin_table, int direction);

/// The same rotation with each row's position given: row r has position positions[r / heads]
/// (inference, where a batch's tokens sit at their sequences' real positions).
void rope_rotate_at(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                    std::int64_t heads, const std::int64_t* positions, const float* cos_table,
                    const float* sin_table, int direction);

}  // namespace troupe::kernels::cpu
