#pragma once

// Every CUDA runtime and cuBLASLt call in kernels/cuda is checked (llm.c style): a failure throws
// std::runtime_error naming the call, the file and line, and the device it ran on (kernels see
// only the ABI and the codecs, not troupe::error; callers catch std::exception). runtime/device
// has its own check (cuda_check.hpp) that throws troupe::error.

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

namespace troupe::kernels::cuda {

/// The calling thread's current device, for messages (-1 when even that cannot be asked).
inline int current_device_for_messages() {
  int ordinal = -1;
  if (cudaGetDevice(&ordinal) != cudaSuccess) {
    (void)cudaGetLastError();
    return -1;
  }
  return ordinal;
}

/// Throws std::runtime_error "FILE:LINE: CALL on cuda:N failed: MESSAGE (NAME)".
[[noreturn]] void fail_cuda_call(const char* call, const char* file, int line, const char* name,
                                 const char* message);

/// Throws std::runtime_error(message): a kernel's precondition that does not hold.
[[noreturn]] void fail_kernel(const std::string& message);

/// Throws std::runtime_error("<kernel>: <what>") when `holds` is false: a bad argument turned into
/// an error before anything launches.
inline void require(bool holds, const char* kernel, const std::string& what) {
  if (!holds) fail_kernel(std::string(kernel) + ": " + what);
}

/// The void* stream of the kernels' interfaces as what CUDA takes.
inline cudaStream_t as_stream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    fail_cuda_call(call, file, line, cudaGetErrorName(status), cudaGetErrorString(status));
}

/// Throws like fail_cuda_call for a cuBLASLt status (check.cpp: names it through cuBLASLt).
void check_cublas(cublasStatus_t status, const char* call, const char* file, int line);

}  // namespace troupe::kernels::cuda

#define TROUPE_CUDA_CHECK(call) \
  ::troupe::kernels::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define TROUPE_CUBLAS_CHECK(call) \
  ::troupe::kernels::cuda::check_cublas((call), #call, __FILE__, __LINE__)
