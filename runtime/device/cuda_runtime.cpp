// The CUDA interface over the CUDA runtime API (built when nvcc is found): devices and copies.
#include <cuda_runtime_api.h>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/cuda_check.hpp"

namespace troupe::cuda {

bool built_with_cuda() {
  return true;
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the "no device" error
    return 0;
  }
  return count;
}

std::string unavailable_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return fmt::format("no usable CUDA device: {}", cudaGetErrorString(status));
  }
  return count == 0 ? "no CUDA device is present" : "";
}

std::vector<gpu_info> visible_gpus() {
  std::vector<gpu_info> gpus;
  const int count = device_count();
  for (int ordinal = 0; ordinal < count; ++ordinal) {
    cudaDeviceProp properties{};
    if (cudaGetDeviceProperties(&properties, ordinal) != cudaSuccess) {
      (void)cudaGetLastError();
      continue;
    }
    gpu_info gpu;
    gpu.ordinal = ordinal;
    gpu.name = properties.name;
    gpu.total_bytes = properties.totalGlobalMem;
    gpu.major = properties.major;
    gpu.minor = properties.minor;
    gpu.multiprocessors = properties.multiProcessorCount;
    std::size_t free = 0, total = 0;
    if (cudaSetDevice(ordinal) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess)
      gpu.free_bytes = free;
    else
      (void)cudaGetLastError();
    gpus.push_back(std::move(gpu));
  }
  return gpus;
}

void require_device(int ordinal) {
  const int count = device_count();
  if (ordinal >= 0 && ordinal < count) return;
  if (count == 0) fail("cuda:{} is not on this machine: {}", ordinal, unavailable_reason());
  fail("cuda:{} is not on this machine: it has {} GPU{} (cuda:0{})", ordinal, count,
       count == 1 ? "" : "s", count == 1 ? "" : fmt::format(" to cuda:{}", count - 1));
}

void* allocate(std::size_t bytes, int ordinal) {
  require_device(ordinal);
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  void* pointer = nullptr;
  const cudaError_t status = cudaMalloc(&pointer, bytes == 0 ? 1 : bytes);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    std::size_t free = 0, total = 0;
    (void)cudaMemGetInfo(&free, &total);
    fail("out of memory on cuda:{}: asked for {}, {} free of {}", ordinal, format_bytes(bytes),
         format_bytes(free), format_bytes(total));
  }
  TROUPE_CUDA_CALL(status);
  return pointer;
}

void release(void* pointer, int ordinal) noexcept {
  if (pointer == nullptr) return;
  (void)cudaSetDevice(ordinal);
  (void)cudaFree(pointer);
}

namespace {

cudaMemcpyKind copy_direction(copy_kind kind) {
  return kind == copy_kind::host_to_device   ? cudaMemcpyHostToDevice
         : kind == copy_kind::device_to_host ? cudaMemcpyDeviceToHost
                                             : cudaMemcpyDeviceToDevice;
}

}  // namespace

void copy(void* destination, const void* source, std::size_t bytes, copy_kind kind, int ordinal) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  TROUPE_CUDA_CALL(cudaMemcpy(destination, source, bytes, copy_direction(kind)));
}

void copy_async(void* destination, const void* source, std::size_t bytes, copy_kind kind,
                void* stream, int ordinal) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  TROUPE_CUDA_CALL(cudaMemcpyAsync(destination, source, bytes, copy_direction(kind),
                                   static_cast<cudaStream_t>(stream)));
}

void zero_async(void* destination, std::size_t bytes, void* stream, int ordinal) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  TROUPE_CUDA_CALL(cudaMemsetAsync(destination, 0, bytes, static_cast<cudaStream_t>(stream)));
}

void synchronize_stream(void* stream, int ordinal) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  TROUPE_CUDA_CALL(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void use_device(int ordinal) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
}

void synchronize(int ordinal) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  TROUPE_CUDA_CALL(cudaDeviceSynchronize());
}

}  // namespace troupe::cuda
