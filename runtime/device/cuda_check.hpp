#pragma once

// Every CUDA runtime call in runtime/device is checked: a failure throws troupe::error naming the
// call, the file and line, and the device. Included only by runtime/device's cuda_*.cpp (it pulls
// in the CUDA headers).

#include <cuda_runtime_api.h>

#include "runtime/core/error.hpp"

namespace troupe::cuda::detail {

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  int ordinal = -1;
  if (cudaGetDevice(&ordinal) != cudaSuccess) (void)cudaGetLastError();
  fail("{}:{}: {} on cuda:{} failed: {} ({})", file, line, call, ordinal,
       cudaGetErrorString(status), cudaGetErrorName(status));
}

}  // namespace troupe::cuda::detail

#define TROUPE_CUDA_CALL(call) ::troupe::cuda::detail::check((call), #call, __FILE__, __LINE__)
