#pragma once

// Rotary position embedding on a CUDA device, the same contract as kernels/cpu/rope.hpp
// (interleaved pairs, YaRN only changes the tables, which the host computes once with
// kernels::cpu::rope_tables and uploads). Device pointers; `stream` is a cudaStream_t.

#include <cstdint>

namespace troupe::kernels::cuda {

/// Rotates `rows` vectors of `dim` values in place; row r (at x + r * stride) has position
/// (r / heads) % length. cos/sin tables are [positions, dim/2]. direction +1 forward, -1 the
/// inverse rotation (backward).
void rope_rotate(float* x, std::int64_t rows, std::int64_t stride, std::int64_t dim,
                 std::int64_t heads, std::int64_t length, const float* cos_table,
                 const float* sin_table, int direction, void* stream);

}  // namespace troupe::kernels::cuda
