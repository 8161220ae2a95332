#include "kernels/cpu/small_gemm.hpp"

#include <algorithm>
#include <memory>

#include "kernels/cpu/gemm.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TROUPE_SMALL_GEMM 1
#else
#define TROUPE_SMALL_GEMM 0
#endif

namespace troupe::kernels::cpu {

#if TROUPE_SMALL_GEMM

// NOTES: GCC 12 warns inside its own intrinsics (_mm512_undefined_ps initialises a value from
// itself on purpose); nothing of ours is uninitialised here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace {

constexpr std::int64_t panel_columns = 32;  // two 16-float vectors
constexpr std::int64_t depth = 256;         // rows of B packed at once
constexpr int tile_rows = 12;               // 24 accumulators, 2 of B, 1 broadcast: 27 of 32

// NOTES: a tile of M rows of C by one panel of 32 columns, summed over `k` rows of the packed
// panel: per row of B two vector loads, M broadcasts of A and 2M FMAs, so the FMA units, not
// the loads, set the pace. A is read in place, row by row; only B is packed (below).
template <int M, bool TransposedA>
__attribute__((target("avx512f"))) void tile(const float* a, std::int64_t lda, const float* panel,
                                             float* c, std::int64_t ldc, std::int64_t k,
                                             float alpha, float beta) {
  __m512 low[M], high[M];
#pragma GCC unroll 12
  for (int i = 0; i < M; ++i) low[i] = high[i] = _mm512_setzero_ps();
  for (std::int64_t p = 0; p < k; ++p) {
    const __m512 b0 = _mm512_loadu_ps(panel + p * panel_columns);
    const __m512 b1 = _mm512_loadu_ps(panel + p * panel_columns + 16);
#pragma GCC unroll 12
    for (int i = 0; i < M; ++i) {
      const __m512 ai = _mm512_set1_ps(TransposedA ? a[p * lda + i] : a[i * lda + p]);
      low[i] = _mm512_fmadd_ps(ai, b0, low[i]);
      high[i] = _mm512_fmadd_ps(ai, b1, high[i]);
    }
  }
  const __m512 scale = _mm512_set1_ps(alpha);
#pragma GCC unroll 12
  for (int i = 0; i < M; ++i) {
    float* row = c + i * ldc;
    __m512 lo = _mm512_mul_ps(low[i], scale), hi = _mm512_mul_ps(high[i], scale);
    if (beta != 0.0f) {  // beta 0 never reads C: it may hold anything
      const __m512 b = _mm512_set1_ps(beta);
      lo = _mm512_fmadd_ps(_mm512_loadu_ps(row), b, lo);
      hi = _mm512_fmadd_ps(_mm512_loadu_ps(row + 16), b, hi);
    }
    _mm512_storeu_ps(row, lo);
    _mm512_storeu_ps(row + 16, hi);
  }
}

using tile_fn = void (*)(const float*, std::int64_t, const float*, float*, std::int64_t,
                         std::int64_t, float, float);

template <bool TransposedA>
constexpr tile_fn tiles[tile_rows + 1] = {nullptr,
                                          tile<1, TransposedA>,
                                          tile<2, TransposedA>,
                                          tile<3, TransposedA>,
                                          tile<4, TransposedA>,
                                          tile<5, TransposedA>,
                                          tile<6, TransposedA>,
                                          tile<7, TransposedA>,
                                          tile<8, TransposedA>,
                                          tile<9, TransposedA>,
                                          tile<10, TransposedA>,
                                          tile<11, TransposedA>,
                                          tile<12, TransposedA>};

// NOTES: B^T's rows are B's columns, so for A B^T (a Linear's forward: B is the weight, [n, k])
// the panels are filled by 16 x 16 transposes in registers (two rounds of unpacks within 128-bit
// lanes, two of lane shuffles), reading 16 rows of B in memory order at a time.
__attribute__((target("avx512f"))) void transpose_16x16(const float* in, std::int64_t ld,
                                                        float* out, std::int64_t out_ld) {
  __m512 r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(in + i * ld);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4g + q]: in each 128-bit lane L, column 4L + q of rows 4g..4g+3
  for (int g = 0; g < 4; ++g) {
    const __m512d lo = _mm512_castps_pd(t[4 * g]), hi = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d lo2 = _mm512_castps_pd(t[4 * g + 2]), hi2 = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2));
  }
  for (int q = 0; q < 4; ++q) {
    const __m512 x = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x44);  // lanes 0, 1 of rows 0-7
    const __m512 y = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xEE);  // lanes 2, 3
    const __m512 x2 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x44);
    const __m512 y2 = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xEE);
    _mm512_storeu_ps(out + (0 + q) * out_ld, _mm512_shuffle_f32x4(x, x2, 0x88));
    _mm512_storeu_ps(out + (4 + q) * out_ld, _mm512_shuffle_f32x4(x, x2, 0xDD));
    _mm512_storeu_ps(out + (8 + q) * out_ld, _mm512_shuffle_f32x4(y, y2, 0x88));
    _mm512_storeu_ps(out + (12 + q) * out_ld, _mm512_shuffle_f32x4(y, y2, 0xDD));
  }
}

/// Rows [first, first + count) of op(B) into panels of 32 columns: packed[j * count + p * 32 + c]
/// holds op(B)[first + p][j + c].
void pack(const gemm_shape& s, const float* b, std::int64_t first, std::int64_t count,
          float* packed) {
  if (!s.transpose_b) {
    for (std::int64_t p = 0; p < count; ++p) {
      const float* row = b + (first + p) * s.ldb;
      for (std::int64_t j = 0; j < s.n; j += panel_columns)
        std::copy(row + j, row + j + panel_columns, packed + j * count + p * panel_columns);
    }
    return;
  }
  const std::int64_t whole = count / 16 * 16;
  for (std::int64_t j = 0; j < s.n; j += 16) {
    float* panel = packed + (j / panel_columns) * panel_columns * count + j % panel_columns;
    const float* rows = b + j * s.ldb + first;
    for (std::int64_t p = 0; p < whole; p += 16)
      transpose_16x16(rows + p, s.ldb, panel + p * panel_columns, panel_columns);
    for (std::int64_t p = whole; p < count; ++p)
      for (int c = 0; c < 16; ++c) panel[p * panel_columns + c] = rows[c * s.ldb + p];
  }
}

bool has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

}  // namespace

bool small_sgemm_fits(const gemm_shape& s) {
  // NOTES: the bounds are where this kernel beat OpenBLAS on this repository's development
  // machine (`troupe bench sgemm`, docs/benchmarks.md). With A^T (a weight gradient) only k from
  // 128 to 512 gains: an expert's (k a hundred rows) ran 0.7x OpenBLAS, a dense layer's over
  // 1024 tokens 0.84-0.99x.
  return s.m >= 48 && s.m <= 256 && s.n % panel_columns == 0 && s.n > 0 && s.n <= 512 && s.k > 0 &&
         (!s.transpose_a || (s.k >= 128 && s.k <= 512)) && has_avx512();
}

void small_sgemm(const gemm_shape& s, float alpha, const float* a, const float* b, float beta,
                 float* c) {
  // NOTES: `depth` rows of op(B) are packed into panels of 32 columns in one pass over B in
  // memory order, which the hardware prefetcher follows; panel by panel, each from rows 2 KiB
  // apart, ran at the speed of memory latency (a hundred rows of A reuse a panel only a few times,
  // so a GEMM of this shape is bound by bringing B in). Packed: 512 KiB at most, in L2.
  const std::int64_t rows_of_b = std::min(depth, s.k);
  const std::unique_ptr<float[]> packed(new float[static_cast<std::size_t>(rows_of_b * s.n)]);
  for (std::int64_t first = 0; first < s.k; first += depth) {
    const std::int64_t count = std::min(depth, s.k - first);
    pack(s, b, first, count, packed.get());
    const float beta_now = first == 0 ? beta : 1.0f;  // later slices add to the first
    for (std::int64_t j = 0; j < s.n; j += panel_columns)
      for (std::int64_t i = 0; i < s.m; i += tile_rows) {
        const auto rows = static_cast<int>(std::min<std::int64_t>(tile_rows, s.m - i));
        const float* a_tile = s.transpose_a ? a + first * s.lda + i : a + i * s.lda + first;
        (s.transpose_a ? tiles<true> : tiles<false>)[rows](a_tile, s.lda, packed.get() + j * count,
                                                           c + i * s.ldc + j, s.ldc, count, alpha,
                                                           beta_now);
      }
  }
}

#pragma GCC diagnostic pop

#else

bool small_sgemm_fits(const gemm_shape&) {
  return false;
}

void small_sgemm(const gemm_shape&, float, const float*, const float*, float, float*) {}

#endif

}  // namespace troupe::kernels::cpu
