#pragma once

// Every CUDA call is checked (llm.c style); a failed launch throws troupe::error.

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace troupe::kernels::cuda {

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what +
                             " failed: " + cudaGetErrorString(status));
}

}  // namespace troupe::kernels::cuda

#define TROUPE_CUDA_CHECK(call) \
  ::troupe::kernels::cuda::check_cuda((call), #call, __FILE__, __LINE__)
