// The stream-ordered memory pool and pinned host memory over the CUDA runtime API.
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <limits>
#include <mutex>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/cuda_check.hpp"
#include "runtime/device/memory_pool.hpp"
#include "runtime/device/pinned_memory.hpp"

namespace troupe::cuda {

namespace {

cudaMemPool_t as_pool(void* handle) {
  return static_cast<cudaMemPool_t>(handle);
}

std::uint64_t attribute(void* pool, cudaMemPoolAttr which) {
  std::uint64_t value = 0;
  TROUPE_CUDA_CALL(cudaMemPoolGetAttribute(as_pool(pool), which, &value));
  return value;
}

constexpr int max_devices = 64;

}  // namespace

namespace {

// NOTES: pools live until the process ends and are never destroyed: a static destructor would run
// after the CUDA runtime has torn its context down.
std::mutex pools_guard;
std::array<memory_pool*, max_devices> pools{};

}  // namespace

memory_pool& memory_pool::on(int ordinal) {
  require_device(ordinal);
  if (ordinal >= max_devices) fail("cuda:{}: troupe handles at most {} GPUs", ordinal, max_devices);
  std::lock_guard lock(pools_guard);
  auto& pool = pools[static_cast<std::size_t>(ordinal)];
  if (pool == nullptr) pool = new memory_pool(ordinal);
  return *pool;
}

std::vector<memory_pool*> memory_pool::created() {
  std::lock_guard lock(pools_guard);
  std::vector<memory_pool*> out;
  for (memory_pool* pool : pools)
    if (pool != nullptr) out.push_back(pool);
  return out;
}

memory_pool::memory_pool(int ordinal) : ordinal_(ordinal), handle_(nullptr) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  cudaMemPoolProps properties{};
  properties.allocType = cudaMemAllocationTypePinned;
  properties.handleTypes = cudaMemHandleTypeNone;
  properties.location.type = cudaMemLocationTypeDevice;
  properties.location.id = ordinal;
  cudaMemPool_t pool = nullptr;
  TROUPE_CUDA_CALL(cudaMemPoolCreate(&pool, &properties));
  handle_ = pool;
  set_release_threshold(std::numeric_limits<std::uint64_t>::max());
}

memory_pool::~memory_pool() = default;

void* memory_pool::allocate(std::size_t bytes, void* stream) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal_));
  void* pointer = nullptr;
  const cudaError_t status = cudaMallocFromPoolAsync(
      &pointer, bytes == 0 ? 1 : bytes, as_pool(handle_), static_cast<cudaStream_t>(stream));
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: the device stays usable
    std::size_t free = 0, total = 0;
    (void)cudaMemGetInfo(&free, &total);
    const pool_statistics held = statistics();
    fail(
        "out of memory on cuda:{}: asked for {}, {} free of {} (troupe's pool holds {}, {} of "
        "it in use)",
        ordinal_, format_bytes(bytes), format_bytes(free), format_bytes(total),
        format_bytes(held.reserved), format_bytes(held.in_use));
  }
  TROUPE_CUDA_CALL(status);
  return pointer;
}

void memory_pool::release(void* pointer, void* stream) noexcept {
  if (pointer == nullptr) return;
  (void)cudaSetDevice(ordinal_);
  if (cudaFreeAsync(pointer, static_cast<cudaStream_t>(stream)) != cudaSuccess)
    (void)cudaGetLastError();
}

pool_statistics memory_pool::statistics() const {
  pool_statistics s;
  s.reserved = attribute(handle_, cudaMemPoolAttrReservedMemCurrent);
  s.in_use = attribute(handle_, cudaMemPoolAttrUsedMemCurrent);
  s.peak_reserved = attribute(handle_, cudaMemPoolAttrReservedMemHigh);
  s.peak_in_use = attribute(handle_, cudaMemPoolAttrUsedMemHigh);
  return s;
}

void memory_pool::reset_peaks() {
  std::uint64_t zero = 0;
  TROUPE_CUDA_CALL(
      cudaMemPoolSetAttribute(as_pool(handle_), cudaMemPoolAttrReservedMemHigh, &zero));
  TROUPE_CUDA_CALL(cudaMemPoolSetAttribute(as_pool(handle_), cudaMemPoolAttrUsedMemHigh, &zero));
}

void memory_pool::set_release_threshold(std::uint64_t bytes) {
  TROUPE_CUDA_CALL(
      cudaMemPoolSetAttribute(as_pool(handle_), cudaMemPoolAttrReleaseThreshold, &bytes));
}

void memory_pool::trim(std::size_t keep_bytes) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal_));
  TROUPE_CUDA_CALL(cudaDeviceSynchronize());  // frees still pending on streams become unused
  TROUPE_CUDA_CALL(cudaMemPoolTrimTo(as_pool(handle_), keep_bytes));
}

void* allocate_pinned(std::size_t bytes) {
  void* pointer = nullptr;
  const cudaError_t status = cudaHostAlloc(&pointer, bytes == 0 ? 1 : bytes, cudaHostAllocPortable);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    fail("cannot pin {} of host memory: {} ({})", format_bytes(bytes), cudaGetErrorString(status),
         cudaGetErrorName(status));
  }
  return pointer;
}

void release_pinned(void* pointer) noexcept {
  if (pointer != nullptr && cudaFreeHost(pointer) != cudaSuccess) (void)cudaGetLastError();
}

}  // namespace troupe::cuda
