#include "kernels/cpu/gemm.hpp"

#include <cblas.h>

#include <algorithm>

#include "kernels/cpu/blas.hpp"
#include "kernels/cpu/small_gemm.hpp"

namespace troupe::kernels::cpu {

void sgemm(const gemm_shape& shape, float alpha, const float* a, const float* b, float beta,
           float* c) {
  if (shape.m == 0 || shape.n == 0) return;
  if (small_sgemm_fits(shape)) {
    small_sgemm(shape, alpha, a, b, beta, c);
    return;
  }
  blas().sgemm(CblasRowMajor, shape.transpose_a ? CblasTrans : CblasNoTrans,
               shape.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(shape.m),
               static_cast<int>(shape.n), static_cast<int>(shape.k), alpha, a,
               static_cast<int>(shape.lda), b, static_cast<int>(shape.ldb), beta, c,
               static_cast<int>(shape.ldc));
}

namespace {
constexpr std::int64_t row_block = 64, column_block = 256;
}  // namespace

void sgemm_on_pool(const troupe_thread_pool* pool, const gemm_shape& s, float alpha, const float* a,
                   const float* b, float beta, float* c) {
  // NOTES: below about a million multiply-adds a single call beats splitting.
  const bool small = s.m * s.n * s.k < (std::int64_t{1} << 20);
  if (pool == nullptr || pool->num_threads <= 1 || small ||
      (s.m <= row_block && s.n <= column_block)) {
    sgemm(s, alpha, a, b, beta, c);
    return;
  }
  struct job {
    const gemm_shape* shape;
    float alpha, beta;
    const float *a, *b;
    float* c;
    bool by_rows;
    std::int64_t step;
  } work{&s, alpha, beta, a, b, c, s.m >= 2 * row_block, 0};
  // NOTES: one block per thread. Every call packs its whole B panel (split by rows) or A panel
  // (by columns) again: 64-row blocks packed B m/64 times, and OpenBLAS's packing took 18% of a
  // small-512 step. One block each: the pool's sgemm 237 -> 335 GFLOP/s on this machine's two
  // cores, the step 1,890 -> 1,776 ms (medians of 3 alternating runs, docs/benchmarks.md).
  const std::int64_t extent = work.by_rows ? s.m : s.n, granule = work.by_rows ? 16 : 64;
  const std::int64_t parts = std::max<std::int64_t>(1, pool->num_threads);
  work.step = (extent + parts - 1) / parts;
  work.step = (work.step + granule - 1) / granule * granule;
  const std::int64_t blocks = (extent + work.step - 1) / work.step;
  pool->parallel_for(
      pool->self, blocks, 1,
      [](void* arg, std::int64_t begin, std::int64_t end) {
        const auto& w = *static_cast<const job*>(arg);
        const gemm_shape& full = *w.shape;
        for (std::int64_t block = begin; block < end; ++block) {
          gemm_shape part = full;
          const float* a_part = w.a;
          const float* b_part = w.b;
          float* c_part = w.c;
          if (w.by_rows) {
            const std::int64_t first = block * w.step;
            part.m = std::min(w.step, full.m - first);
            a_part += full.transpose_a ? first : first * full.lda;
            c_part += first * full.ldc;
          } else {
            const std::int64_t first = block * w.step;
            part.n = std::min(w.step, full.n - first);
            b_part += full.transpose_b ? first * full.ldb : first;
            c_part += first;
          }
          sgemm(part, w.alpha, a_part, b_part, w.beta, c_part);
        }
      },
      &work);
}

void set_blas_threads(int threads) {
  if (const auto& library = blas(); library.set_threads != nullptr) library.set_threads(threads);
}

int blas_threads() {
  const auto& library = blas();
  return library.get_threads != nullptr ? library.get_threads() : 1;
}

}  // namespace troupe::kernels::cpu
