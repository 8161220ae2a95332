// The CUDA GEMM provider in a build without nvcc: every call says so.
#include <cstdio>

#include "runtime/exec/cuda_gemm.hpp"

namespace troupe {

namespace {

troupe_status cuda_gemm(void*, const troupe_exec_context*, const troupe_gemm_call*,
                        troupe_error* error) {
  std::snprintf(error->message, sizeof(error->message),
                "troupe was built without CUDA: there is no cuBLASLt GEMM provider");
  return TROUPE_STATUS_UNSUPPORTED;
}

const troupe_gemm_provider provider{nullptr, "cublaslt", &cuda_gemm};

}  // namespace

const troupe_gemm_provider* cuda_gemm_provider() {
  return &provider;
}

void forget_cuda_gemm_stream(void*) noexcept {}

}  // namespace troupe
