// The runtime's BLAS GEMM provider against a float64 triple loop, every transpose combination,
// strided leading dimensions, beta accumulation, and its error messages.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/small_gemm.hpp"

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

// troupe's own kernel for few rows (kernels/cpu/small_gemm.hpp) against float64, through sgemm
// as every caller reaches it: A and B as they are and transposed, k in one slice and in
// several with a part of a 16-column block left over, edge tiles of rows, leading dimensions wider
// than the rows, and beta 0 over a C full of NaN (never read), the columns past n left alone.
// Tolerance 1e-5 of the sum of |a b| per element. A C cut into row blocks equals the whole bit for
// bit.
TEST(SmallGemm, EqualsAFloat64ReferenceOnEveryPath) {
  namespace cpu = troupe::kernels::cpu;
  struct problem {
    std::int64_t m, n, k;
  };
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  int handled = 0;
  for (const problem& pr :
       {problem{48, 32, 16}, problem{50, 64, 17}, problem{97, 96, 300}, problem{130, 480, 257},
        problem{256, 512, 512}, problem{61, 256, 77}, problem{64, 128, 1024}}) {
    for (const auto& [ta, tb] :
         {std::pair{false, false}, {false, true}, {true, false}, {true, true}}) {
      for (const float beta : {0.0f, 2.0f}) {
        const std::int64_t lda = (ta ? pr.m : pr.k) + 3, ldb = (tb ? pr.k : pr.n) + 5,
                           ldc = pr.n + 7;
        std::vector<float> a(static_cast<std::size_t>((ta ? pr.k : pr.m) * lda)),
            b(static_cast<std::size_t>((tb ? pr.n : pr.k) * ldb)),
            c(static_cast<std::size_t>(pr.m * ldc));
        for (auto* v : {&a, &b, &c})
          for (float& x : *v) x = u(rng);
        const std::vector<float> c0 = c;
        if (beta == 0.0f) std::fill(c.begin(), c.end(), std::numeric_limits<float>::quiet_NaN());
        const cpu::gemm_shape shape{ta, tb, pr.m, pr.n, pr.k, lda, ldb, ldc};
        handled += cpu::small_sgemm_fits(shape) ? 1 : 0;
        std::vector<float> blocks = c;
        cpu::sgemm(shape, 0.5f, a.data(), b.data(), beta, c.data());
        const std::int64_t cut = pr.m / 2;  // the same product as two row blocks
        for (const auto& [first, rows] : {std::pair{std::int64_t{0}, cut}, {cut, pr.m - cut}}) {
          cpu::gemm_shape part = shape;
          part.m = rows;
          cpu::sgemm(part, 0.5f, a.data() + (ta ? first : first * lda), b.data(), beta,
                     blocks.data() + first * ldc);
        }
        double worst = 0.0;
        bool same_in_blocks = true;
        for (std::int64_t i = 0; i < pr.m; ++i)
          for (std::int64_t j = 0; j < pr.n; ++j) {
            double sum = 0.0, magnitude = 0.0;
            for (std::int64_t p = 0; p < pr.k; ++p) {
              const double x = a[static_cast<std::size_t>(ta ? p * lda + i : i * lda + p)];
              const double y = tb ? b[static_cast<std::size_t>(j * ldb + p)]
                                  : b[static_cast<std::size_t>(p * ldb + j)];
              sum += x * y;
              magnitude += std::fabs(x * y);
            }
            const auto at = static_cast<std::size_t>(i * ldc + j);
            const double expected =
                0.5 * sum + (beta != 0.0f ? double{beta} * double{c0[at]} : 0.0);
            worst = std::max(worst, std::fabs(double{c[at]} - expected) / (1.0 + magnitude));
            same_in_blocks = same_in_blocks && (blocks[at] == c[at]);
          }
        for (std::int64_t i = 0; i < pr.m; ++i)  // the columns past n are not C's: untouched
          for (std::int64_t j = pr.n; j < ldc; ++j) {
            const auto at = static_cast<std::size_t>(i * ldc + j);
            if (beta != 0.0f) {
              EXPECT_EQ(c[at], c0[at]) << "row " << i << " column " << j;
            } else {
              EXPECT_TRUE(std::isnan(c[at])) << "row " << i << " column " << j;
            }
          }
        EXPECT_LE(worst, 1e-5) << pr.m << "x" << pr.n << "x" << pr.k << " ta=" << ta << " tb=" << tb
                               << " beta=" << beta;
        if (cpu::small_sgemm_fits(shape) && pr.m / 2 >= 48) {
          EXPECT_TRUE(same_in_blocks) << pr.m << "x" << pr.n << "x" << pr.k << " tb=" << tb;
        }
      }
    }
  }
  if (handled == 0) GTEST_SKIP() << "this CPU has no AVX-512: every product went to OpenBLAS";
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
