#include "runtime/exec/exec_context.hpp"

#include <cstdlib>

#include "runtime/device/cuda.hpp"
#include "runtime/exec/blas_gemm.hpp"

namespace troupe {

namespace {

void* allocate(void*, DLDevice where, std::size_t bytes) {
  constexpr std::size_t alignment = 256;
  if (where.device_type == kDLCUDA) {
    try {
      return cuda::allocate(bytes, where.device_id);
    } catch (...) {
      return nullptr;
    }
  }
  const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
  return std::aligned_alloc(alignment, rounded == 0 ? alignment : rounded);
}

void release(void*, DLDevice where, void* pointer) {
  if (where.device_type == kDLCUDA)
    cuda::release(pointer, where.device_id);
  else
    std::free(pointer);
}

const troupe_allocator allocator{nullptr, &allocate, &release};

}  // namespace

const troupe_allocator* runtime_allocator() {
  return &allocator;
}

exec_context::exec_context(device where, thread_pool& pool, const troupe_gemm_provider* gemm,
                           void* stream)
    : where_(where), pool_(&pool) {
  context_.struct_size = sizeof(troupe_exec_context);
  context_.device = to_dlpack(where);
  context_.stream = stream;
  context_.pool = pool.abi();
  context_.gemm = gemm != nullptr ? gemm : blas_gemm_provider();
  context_.allocator = runtime_allocator();
}

void exec_context::set_gemm_provider(const troupe_gemm_provider* gemm) {
  context_.gemm = gemm != nullptr ? gemm : blas_gemm_provider();
}

}  // namespace troupe
