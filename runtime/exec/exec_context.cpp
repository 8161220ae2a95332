#include "runtime/exec/exec_context.hpp"

#include <atomic>
#include <cstdlib>

#include "runtime/device/cuda.hpp"
#include "runtime/device/memory_pool.hpp"
#include "runtime/exec/bf16_copies.hpp"
#include "runtime/exec/blas_gemm.hpp"
#include "runtime/exec/cuda_gemm.hpp"
#include "runtime/exec/gradient_squares.hpp"
#include "runtime/tensor/host_pool.hpp"

namespace troupe {

namespace {

void* allocate(void*, DLDevice where, std::size_t bytes) {
  if (where.device_type == kDLCUDA) {
    try {
      return cuda::memory_pool::on(where.device_id)
          .allocate(bytes, cuda::current_stream(where.device_id));
    } catch (...) {
      return nullptr;
    }
  }
  try {
    return host_pool::global().allocate(bytes);
  } catch (...) {
    return nullptr;
  }
}

void release(void*, DLDevice where, void* pointer) {
  if (where.device_type == kDLCUDA)
    cuda::memory_pool::on(where.device_id).release(pointer, cuda::current_stream(where.device_id));
  else
    host_pool::global().release(pointer);
}

const troupe_allocator allocator{nullptr, &allocate, &release};

std::atomic<std::uint64_t> parameter_writes{0};

std::uint64_t version_for_plugins() {
  return parameter_writes.load(std::memory_order_acquire);
}

}  // namespace

void parameters_changed() {
  bf16_copies::invalidate_all();
  parameter_writes.fetch_add(1, std::memory_order_acq_rel);
}

void parameters_stepped(const std::vector<const float*>& values) {
  bf16_copies::invalidate(values);
  parameter_writes.fetch_add(1, std::memory_order_acq_rel);
}

std::uint64_t parameter_version() {
  return version_for_plugins();
}

const troupe_allocator* runtime_allocator() {
  return &allocator;
}

exec_context::exec_context(device where, thread_pool& pool, const troupe_gemm_provider* gemm,
                           void* stream)
    : where_(where), pool_(&pool) {
  if (where.is_cuda()) {
    cuda::require_device(where.index);
    if (stream == nullptr) {
      owned_stream_ = std::make_unique<cuda::stream>(where.index);
      stream = owned_stream_->native();
    }
  }
  context_.struct_size = sizeof(troupe_exec_context);
  context_.device = to_dlpack(where);
  context_.stream = stream;
  context_.pool = pool.abi();
  context_.allocator = runtime_allocator();
  context_.parameter_version = &version_for_plugins;
  context_.keep_bf16_copy = &bf16_copies::keep;
  context_.bf16_copy_current = &bf16_copies::current;
  context_.gradient_squares = &gradient_squares::report;
  // NOTES: 2^32 apart per context, so a layer never mistakes another context's count (one made
  // at a freed context's address included) for one more zeroing of its own.
  static std::atomic<std::uint64_t> contexts{0};
  context_.gradient_generation = contexts.fetch_add(1, std::memory_order_relaxed) << 32;
  set_gemm_provider(gemm);
}

exec_context::~exec_context() {
  if (owned_stream_) forget_cuda_gemm_stream(owned_stream_->native());
}

void exec_context::set_gemm_provider(const troupe_gemm_provider* gemm) {
  context_.gemm = gemm != nullptr    ? gemm
                  : where_.is_cuda() ? cuda_gemm_provider()
                                     : blas_gemm_provider();
}

}  // namespace troupe
