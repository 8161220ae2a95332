// The CUDA interface over the CUDA runtime API (built when nvcc is found).
#include <cuda_runtime_api.h>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"

namespace troupe::cuda {

namespace {

void check(cudaError_t status, const char* what, int ordinal) {
  if (status != cudaSuccess)
    fail("CUDA {} on cuda:{} failed: {} ({})", what, ordinal, cudaGetErrorString(status),
         cudaGetErrorName(status));
}

}  // namespace

bool built_with_cuda() {
  return true;
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

std::string unavailable_reason() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return fmt::format("no usable CUDA device: {}", cudaGetErrorString(status));
  }
  return count == 0 ? "no CUDA device is present" : "";
}

void* allocate(std::size_t bytes, int ordinal) {
  check(cudaSetDevice(ordinal), "cudaSetDevice", ordinal);
  void* pointer = nullptr;
  check(cudaMalloc(&pointer, bytes == 0 ? 1 : bytes), "cudaMalloc", ordinal);
  return pointer;
}

void release(void* pointer, int ordinal) noexcept {
  if (pointer == nullptr) return;
  cudaSetDevice(ordinal);
  cudaFree(pointer);
}

void copy(void* destination, const void* source, std::size_t bytes, copy_kind kind, int ordinal) {
  check(cudaSetDevice(ordinal), "cudaSetDevice", ordinal);
  cudaMemcpyKind direction = kind == copy_kind::host_to_device   ? cudaMemcpyHostToDevice
                             : kind == copy_kind::device_to_host ? cudaMemcpyDeviceToHost
                                                                 : cudaMemcpyDeviceToDevice;
  check(cudaMemcpy(destination, source, bytes, direction), "cudaMemcpy", ordinal);
}

void use_device(int ordinal) {
  check(cudaSetDevice(ordinal), "cudaSetDevice", ordinal);
}

void synchronize(int ordinal) {
  check(cudaSetDevice(ordinal), "cudaSetDevice", ordinal);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize", ordinal);
}

}  // namespace troupe::cuda
