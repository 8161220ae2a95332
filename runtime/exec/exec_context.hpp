#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "runtime/abi/troupe_plugin.h"
#include "runtime/device/device.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/exec/thread_pool.hpp"

namespace troupe {

/// Owns a troupe_exec_context: the device, stream, worker pool, GEMM provider and allocator a
/// plugin call may use. The pool and provider must outlive the context. A context on `cuda:N`
/// owns a stream on that GPU (unless it is given one): the stream of the actor that holds it.
class exec_context {
 public:
  /// A context on `where` using `pool` and `gemm` (when null: BLAS on the CPU, cuBLASLt on a
  /// GPU). On a GPU, `stream` (a native handle) is used when given, else the context makes its
  /// own. Fails, naming the device, when `where` is a GPU this machine does not have.
  exec_context(device where, thread_pool& pool, const troupe_gemm_provider* gemm = nullptr,
               void* stream = nullptr);
  ~exec_context();
  exec_context(const exec_context&) = delete;
  exec_context& operator=(const exec_context&) = delete;

  /// The context's stream (a native handle; nullptr on the CPU).
  void* stream() const { return context_.stream; }

  const troupe_exec_context* abi() const { return &context_; }
  device where() const { return where_; }
  thread_pool& pool() const { return *pool_; }

  /// Says that the gradients of the layers running on this context were just zeroed (adds one to
  /// the context's gradient_generation): their next backward may store into them.
  void gradients_zeroed() { ++context_.gradient_generation; }
  /// The count gradients_zeroed moves (ABI 1.4's gradient_generation).
  std::uint64_t gradient_generation() const { return context_.gradient_generation; }

  /// Switches the GEMM provider (an FP8 plugin, or back to the default with nullptr).
  void set_gemm_provider(const troupe_gemm_provider* gemm);
  const troupe_gemm_provider* gemm_provider() const { return context_.gemm; }

 private:
  device where_;
  thread_pool* pool_;
  std::unique_ptr<cuda::stream> owned_stream_;
  troupe_exec_context context_{};
};

/// Makes the context's stream the calling thread's current stream while it lives (the memory
/// pool orders allocations and frees on the current stream, so the buffers of a call on a GPU
/// are ordered with its kernels); does nothing on the CPU.
class context_stream_scope {
 public:
  explicit context_stream_scope(const exec_context& context) {
    if (context.where().is_cuda()) guard_.emplace(context.where().index, context.stream());
  }

 private:
  std::optional<cuda::stream_guard> guard_;
};

/// Marks every parameter of the process as possibly written (an optimizer step, a checkpoint
/// load): what plugins derived from their weights (BF16 copies) is derived again. Cheap; call it
/// before the writes are enqueued.
void parameters_changed();

/// parameters_changed() for an optimizer step on a GPU: the version moves, but of the BF16 copies
/// (runtime/exec/bf16_copies.hpp) only those of `values` go stale, not other optimizers'.
void parameters_stepped(const std::vector<const float*>& values);

/// The number plugins read through their context's `parameter_version`.
std::uint64_t parameter_version();

/// The allocator plugins get: aligned host memory, or device memory through the CUDA runtime.
const troupe_allocator* runtime_allocator();

}  // namespace troupe
