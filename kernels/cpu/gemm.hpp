#pragma once

// FP32 GEMM on the host through OpenBLAS (row-major):
//   C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C
// where op(X) is X or its transpose. Leading dimensions are row strides in elements. Products of
// few rows (48-256; small_gemm_fits says which) go to troupe's own AVX-512 kernel instead
// (small_gemm.hpp), where it measured faster than OpenBLAS (docs/benchmarks.md).

#include <cstdint>

#include "runtime/abi/troupe_plugin.h"

namespace troupe::kernels::cpu {

struct gemm_shape {
  bool transpose_a = false;
  bool transpose_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  std::int64_t lda = 0, ldb = 0, ldc = 0;
};

void sgemm(const gemm_shape& shape, float alpha, const float* a, const float* b, float beta,
           float* c);

/// The same product split over a worker pool: C is cut into fixed blocks (64 rows, or 256
/// columns when there are few rows) that the pool's threads compute with single-threaded sgemm
/// calls. The cut does not depend on the number of threads, so results do not either.
void sgemm_on_pool(const troupe_thread_pool* pool, const gemm_shape& shape, float alpha,
                   const float* a, const float* b, float beta, float* c);

/// Number of threads OpenBLAS uses inside one call. troupe keeps it at 1 (set when the library is
/// loaded) and parallelises on its own worker pool instead, so BLAS threads never compete with
/// the pool for cores.
void set_blas_threads(int threads);
int blas_threads();

}  // namespace troupe::kernels::cpu
