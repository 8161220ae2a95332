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

const troupe_gemm_provider provider{nullptr, TROUPE_GEMM_CUBLASLT, &cuda_gemm};
const troupe_gemm_provider bf16_provider{nullptr, TROUPE_GEMM_CUBLASLT_BF16, &cuda_gemm};

}  // namespace

const troupe_gemm_provider* cuda_gemm_provider() {
  return &provider;
}

const troupe_gemm_provider* cuda_bf16_gemm_provider() {
  return &bf16_provider;
}

void forget_cuda_gemm_stream(void*) noexcept {}

}  // namespace troupe
