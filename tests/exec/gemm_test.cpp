// The runtime's BLAS GEMM provider against a float64 triple loop, every transpose combination,
// strided leading dimensions, beta accumulation, and its error messages.
#include <gtest/gtest.h>

#include <random>

#include "runtime/exec/blas_gemm.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/tensor/tensor.hpp"

namespace {

using troupe::dtype;
using troupe::tensor;

tensor random_matrix(std::int64_t rows, std::int64_t cols, std::mt19937& rng) {
  tensor t = tensor::empty(dtype::f32, {rows, cols});
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = u(rng);
  return t;
}

double element(const tensor& t, std::int64_t r, std::int64_t c) {
  return t.data_as<float>()[r * t.strides()[0] + c];
}

TEST(BlasGemm, MatchesAFloat64ReferenceForEveryTranspose) {
  troupe::thread_pool pool(1);
  troupe::exec_context context(troupe::device::cpu(), pool);
  std::mt19937 rng(1);
  const std::int64_t m = 13, n = 7, k = 33;
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      tensor a = ta ? random_matrix(k, m, rng) : random_matrix(m, k, rng);
      // B is a column slice of a wider matrix: a leading dimension larger than its width.
      tensor wide = tb ? random_matrix(n, k + 5, rng) : random_matrix(k, n + 5, rng);
      tensor b = tb ? wide.narrow(1, 2, k) : wide.narrow(1, 2, n);
      tensor c = random_matrix(m, n, rng);
      tensor c0 = c.clone();
      DLTensor av = a.dl_view(), bv = b.dl_view(), cv = c.dl_view();
      troupe_gemm_call call{sizeof(troupe_gemm_call), &av, &bv, &cv, ta, tb, 0.5f, 2.0f,
                            TROUPE_GEMM_FPROP,        0};
      troupe::run_gemm(context, call);
      for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) {
          double sum = 0;
          for (std::int64_t p = 0; p < k; ++p)
            sum += (ta ? element(a, p, i) : element(a, i, p)) *
                   (tb ? element(b, j, p) : element(b, p, j));
          double expected = 0.5 * sum + 2.0 * element(c0, i, j);
          EXPECT_NEAR(element(c, i, j), expected, 1e-5 * (1 + std::fabs(expected)))
              << "ta=" << ta << " tb=" << tb << " (" << i << "," << j << ")";
        }
      }
    }
  }
}

TEST(BlasGemm, RejectsMismatchedOperandsWithTheShapes) {
  troupe::thread_pool pool(1);
  troupe::exec_context context(troupe::device::cpu(), pool);
  tensor a = tensor::zeros(dtype::f32, {4, 3}), b = tensor::zeros(dtype::f32, {4, 2});
  tensor c = tensor::zeros(dtype::f32, {4, 2});
  DLTensor av = a.dl_view(), bv = b.dl_view(), cv = c.dl_view();
  troupe_gemm_call call{sizeof(troupe_gemm_call), &av, &bv, &cv, 0, 0, 1.0f, 0.0f,
                        TROUPE_GEMM_FPROP,        0};
  try {
    troupe::run_gemm(context, call);
    FAIL();
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("4x3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("blas-f32"), std::string::npos) << e.what();
  }
  tensor ints = tensor::zeros(dtype::i32, {4, 3});
  DLTensor iv = ints.dl_view();
  call.a = &iv;
  EXPECT_THROW(troupe::run_gemm(context, call), troupe::error);
}

}  // namespace
