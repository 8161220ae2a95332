#include "kernels/cuda/check.cuh"

#include <stdexcept>
#include "kernels/cuda/cublaslt_api.hpp"

#include <fmt/format.h>

namespace troupe::kernels::cuda {

void fail_cuda_call(const char* call, const char* file, int line, const char* name,
                    const char* message) {
  throw std::runtime_error(fmt::format("{}:{}: {} on cuda:{} failed: {} ({})", file, line, call,
                                       current_device_for_messages(), message, name));
}

void fail_kernel(const std::string& message) {
  throw std::runtime_error(message);
}

void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    fail_cuda_call(call, file, line, cublaslt().status_name(status),
                   cublaslt().status_string(status));
}

}  // namespace troupe::kernels::cuda
