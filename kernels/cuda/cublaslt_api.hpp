#pragma once

// cuBLASLt, loaded when first needed rather than linked. libcublasLt's 94 KB of thread-local
// storage, linked in at startup, lands in every thread's static TLS block, and threads created
// with small stacks (civetweb's, behind the Prometheus endpoint) then fail to start; loaded with
// dlopen, its TLS is allocated per thread on demand. troupe also starts on a machine without
// cuBLAS and says so only when a GPU GEMM is asked for.

#include <cublasLt.h>

namespace troupe::kernels::cuda {

/// The cuBLASLt entry points troupe calls.
struct cublaslt_api {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtDestroy) destroy;
  decltype(&cublasLtGetStatusName) status_name;
  decltype(&cublasLtGetStatusString) status_string;
  decltype(&cublasLtMatmul) matmul;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatmulPreferenceCreate) preference_create;
  decltype(&cublasLtMatmulPreferenceDestroy) preference_destroy;
  decltype(&cublasLtMatmulPreferenceSetAttribute) preference_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
};

/// The API, loaded on first use (libcublasLt.so.13 through the loader's search path). Throws
/// troupe::error naming the library and the loader's message when it cannot be loaded.
const cublaslt_api& cublaslt();

}  // namespace troupe::kernels::cuda
