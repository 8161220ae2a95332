#pragma once

#include "runtime/abi/troupe_plugin.h"
#include "runtime/device/device.hpp"
#include "runtime/exec/thread_pool.hpp"

namespace troupe {

/// Owns a troupe_exec_context: the device, stream, worker pool, GEMM provider and allocator a
/// plugin call may use. The pool and provider must outlive the context.
class exec_context {
 public:
  /// A context on `where` using `pool` and `gemm` (the BLAS provider when null).
  exec_context(device where, thread_pool& pool, const troupe_gemm_provider* gemm = nullptr,
               void* stream = nullptr);

  const troupe_exec_context* abi() const { return &context_; }
  device where() const { return where_; }
  thread_pool& pool() const { return *pool_; }

  /// Switches the GEMM provider (an FP8 plugin, or back to the default with nullptr).
  void set_gemm_provider(const troupe_gemm_provider* gemm);
  const troupe_gemm_provider* gemm_provider() const { return context_.gemm; }

 private:
  device where_;
  thread_pool* pool_;
  troupe_exec_context context_{};
};

/// The allocator plugins get: aligned host memory, or device memory through the CUDA runtime.
const troupe_allocator* runtime_allocator();

}  // namespace troupe
