#pragma once

// RMSNorm on a CUDA device, the same contract as kernels/cpu/rmsnorm.hpp:
//   y = weight * x / sqrt(mean(x^2) + eps);  forward saves 1/rms per row,
//   backward accumulates (+=) into dx and dweight.
// Pointers are device pointers; `stream` is a cudaStream_t. Plain C++ header.

#include <cstdint>

namespace troupe::kernels::cuda {

/// Rows [0, rows) of width `dim`; x's rows are `ldx` apart and y's `ldy` (a norm over some
/// columns of a wider row, as MLA's kv latent and the MTP module's joined rows have it). `rstd`
/// (one float per row) may be null.
void rmsnorm_forward(const float* x, std::int64_t ldx, const float* weight, float* y,
                     std::int64_t ldy, float* rstd, std::int64_t rows, std::int64_t dim, float eps,
                     void* stream);

/// Floats of scratch rmsnorm_backward needs (per-block partial sums of dweight).
std::int64_t rmsnorm_backward_scratch(std::int64_t rows, std::int64_t dim);

/// dx += dL/dx, dweight += dL/dweight (dweight may be null); x and dx rows `ldx` apart, dy's
/// `ldy`. The weight gradient is summed per fixed block of rows and then in block order: the
/// same bits on every run.
void rmsnorm_backward(const float* dy, std::int64_t ldy, const float* x, std::int64_t ldx,
                      const float* weight, const float* rstd, float* dx, float* dweight,
                      std::int64_t rows, std::int64_t dim, float* scratch, void* stream);

}  // namespace troupe::kernels::cuda
