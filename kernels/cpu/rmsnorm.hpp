#pragma once

// RMSNorm over the last dimension, llm.c style: forward saves 1/rms per row; backward
// accumulates (+=) into dx and dweight.
//   y = weight * x / sqrt(mean(x^2) + eps)

#include <cstdint>

namespace troupe::kernels::cpu {

/// Rows [0, rows) of width `dim`. `rstd` gets one value per row (for backward); may be null.
void rmsnorm_forward(const float* x, const float* weight, float* y, float* rstd, std::int64_t rows,
                     std::int64_t dim, float eps);

/// dx += dL/dx and dweight += dL/dweight for the same rows. `dweight` may be null (frozen weight).
void rmsnorm_backward(const float* dy, const float* x, const float* weight, const float* rstd,
                      float* dx, float* dweight, std::int64_t rows, std::int64_t dim);

}  // namespace troupe::kernels::cpu
