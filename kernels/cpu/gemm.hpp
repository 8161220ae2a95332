#pragma once

// FP32 GEMM on the host through OpenBLAS (row-major):
//   C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C
// where op(X) is X or its transpose. Leading dimensions are row strides in elements.

#include <cstdint>

namespace troupe::kernels::cpu {

struct gemm_shape {
  bool transpose_a = false;
  bool transpose_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
};

void sgemm(const gemm_shape& shape, float alpha, const float* a, const float* b, float beta,
           float* c);

/// Number of threads OpenBLAS uses for one call; the runtime sets it when it allots cores.
void set_blas_threads(int threads);
int blas_threads();

}  // namespace troupe::kernels::cpu
