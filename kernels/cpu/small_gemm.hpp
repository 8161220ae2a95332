#pragma once

// FP32 GEMM of few rows on AVX-512:
//   C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C      (row-major; op(X) is X or X^T)
// the shapes of the routed experts (a hundred rows per expert against its weights, forward and
// input gradient) and of attention's blocks (128 query rows), where OpenBLAS spends about as long
// packing its operands as multiplying them. sgemm() picks it; `troupe bench sgemm` measures it
// against OpenBLAS.

#include <cstdint>

namespace troupe::kernels::cpu {

struct gemm_shape;

/// Whether small_sgemm handles `shape` on this CPU: 48 <= m <= 256, n a multiple of 32 up to
/// 512, k from 128 to 512 where A is transposed, and a CPU with AVX-512F.
bool small_sgemm_fits(const gemm_shape& shape);

/// The product for a shape small_sgemm_fits accepts. Each element of C is summed over k in the
/// same order wherever its row and column fall, so cutting C into row blocks that all still fit
/// gives the same bits.
void small_sgemm(const gemm_shape& shape, float alpha, const float* a, const float* b, float beta,
                 float* c);

}  // namespace troupe::kernels::cpu
