#pragma once

// OpenBLAS, loaded with dlopen on first use rather than linked.
//
// NOTES: a linked OpenBLAS puts its 60 KB of thread-local storage in the static TLS block, which
// glibc carves out of every thread's stack, and civetweb (the HTTP server under prometheus-cpp's
// metrics endpoint) runs its workers on fixed 100 KB stacks: with OpenBLAS linked, a scrape
// overflows the worker's stack. A dlopen'ed library's TLS is allocated on demand instead. It also
// lets TROUPE_BLAS_LIBRARY pick another CBLAS (MKL's, BLIS's) without a rebuild.

#include <string>

namespace troupe::kernels::cpu {

/// The CBLAS entry points troupe uses.
struct blas_library {
  std::string file;  ///< the library that was loaded
  void (*sgemm)(int order, int transpose_a, int transpose_b, int m, int n, int k, float alpha,
                const float* a, int lda, const float* b, int ldb, float beta, float* c,
                int ldc) = nullptr;
  void (*set_threads)(int threads) = nullptr;  ///< null when the library has no such call
  int (*get_threads)() = nullptr;
};

/// Loads the BLAS once (TROUPE_BLAS_LIBRARY, else libopenblas.so.0, else libopenblas.so).
/// Throws std::runtime_error naming what was tried and why it failed.
const blas_library& blas();

}  // namespace troupe::kernels::cpu
