#pragma once

// Linear layers through the execution context's GEMM provider (the runtime's FP32 BLAS one, or
// the FP8 plugin's), so every linear layer follows the precision the topology chose.
//   forward:  y[rows, out] (=, or += with accumulate) x[rows, in] W[out, in]^T   (Fprop)
//   backward: dx[rows, in] += dy W                                               (Dgrad)
//             dW[out, in]  += dy^T x                                             (Wgrad)
// Row strides default to the widths. Every call returns the provider's status.

#include <cstdint>

#include "runtime/abi/troupe_plugin.h"

namespace troupe::kernels {

struct matrix_view {
  const float* data;
  std::int64_t rows, cols, ld;
};

/// C = alpha op(A) op(B) + beta C through the provider, on 2-D row-major f32 matrices.
troupe_status provider_gemm(const troupe_exec_context* context, troupe_gemm_pass pass,
                            int weight_operand, bool transpose_a, matrix_view a, bool transpose_b,
                            matrix_view b, float* c, std::int64_t c_rows, std::int64_t c_cols,
                            std::int64_t ldc, float beta, troupe_error* error);

troupe_status linear_forward(const troupe_exec_context* context, const float* x, std::int64_t ldx,
                             const float* weight, float* y, std::int64_t ldy, std::int64_t rows,
                             std::int64_t in, std::int64_t out, bool accumulate,
                             troupe_error* error);

/// dx += dy W (dx = dy W with `accumulate_dx` false: its old contents are never read, so it
/// needs no zero fill) and dweight += dy^T x. dx may be null (no input gradient wanted); dweight
/// may be null (frozen weight).
troupe_status linear_backward(const troupe_exec_context* context, const float* dy,
                              std::int64_t lddy, const float* x, std::int64_t ldx,
                              const float* weight, float* dx, std::int64_t lddx, float* dweight,
                              std::int64_t rows, std::int64_t in, std::int64_t out,
                              troupe_error* error, bool accumulate_dx = true);

}  // namespace troupe::kernels
