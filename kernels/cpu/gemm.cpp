#include "kernels/cpu/gemm.hpp"

#include <cblas.h>

#include "kernels/cpu/blas.hpp"

namespace troupe::kernels::cpu {

void sgemm(const gemm_shape& shape, float alpha, const float* a, const float* b, float beta,
           float* c) {
  if (shape.m == 0 || shape.n == 0) return;
  blas().sgemm(CblasRowMajor, shape.transpose_a ? CblasTrans : CblasNoTrans,
               shape.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(shape.m),
               static_cast<int>(shape.n), static_cast<int>(shape.k), alpha, a,
               static_cast<int>(shape.lda), b, static_cast<int>(shape.ldb), beta, c,
               static_cast<int>(shape.ldc));
}

void set_blas_threads(int threads) {
  if (const auto& library = blas(); library.set_threads != nullptr) library.set_threads(threads);
}

int blas_threads() {
  const auto& library = blas();
  return library.get_threads != nullptr ? library.get_threads() : 1;
}

}  // namespace troupe::kernels::cpu
