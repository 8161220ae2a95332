#include "kernels/cpu/gemm.hpp"

#include <cblas.h>

namespace troupe::kernels::cpu {

void sgemm(const gemm_shape& shape, float alpha, const float* a, const float* b, float beta,
           float* c) {
  if (shape.m == 0 || shape.n == 0) return;
  cblas_sgemm(CblasRowMajor, shape.transpose_a ? CblasTrans : CblasNoTrans,
              shape.transpose_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(shape.m),
              static_cast<blasint>(shape.n), static_cast<blasint>(shape.k), alpha, a,
              static_cast<blasint>(shape.lda), b, static_cast<blasint>(shape.ldb), beta, c,
              static_cast<blasint>(shape.ldc));
}

void set_blas_threads(int threads) { openblas_set_num_threads(threads); }

int blas_threads() { return openblas_get_num_threads(); }

}  // namespace troupe::kernels::cpu
