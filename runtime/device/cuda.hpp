#pragma once

// The runtime's window onto the CUDA runtime API: which GPUs there are, and plain copies. A
// build without nvcc compiles cuda_absent.cpp instead of the cuda_*.cpp files: every call then
// reports that CUDA is not built in, so the rest of the runtime never needs an #ifdef. Streams,
// events, the stream-ordered memory pool and pinned host memory have headers of their own
// (stream.hpp, memory_pool.hpp, pinned_memory.hpp); no CUDA type appears in any of them.

#include <cstddef>
#include <string>
#include <vector>

namespace troupe::cuda {

/// True when this build compiled the CUDA kernels and links the CUDA runtime.
bool built_with_cuda();

/// Number of usable CUDA devices; 0 when CUDA is not built in, no driver or no GPU. Never throws.
int device_count();

/// Why device_count() is 0 ("built without CUDA", the driver's error string, ...); "" otherwise.
std::string unavailable_reason();

/// What one GPU is.
struct gpu_info {
  int ordinal = 0;
  std::string name;             ///< "NVIDIA H200"
  std::size_t total_bytes = 0;  ///< device memory
  std::size_t free_bytes = 0;   ///< free now, as the driver reports it
  int major = 0, minor = 0;     ///< compute capability (9.0 for Hopper)
  int multiprocessors = 0;
};

/// Every visible GPU; empty when there is none (or CUDA is not built in). Never throws.
std::vector<gpu_info> visible_gpus();

/// "cuda:0 NVIDIA H200, 139.8 GiB (139.2 GiB free), sm_90, 132 SMs".
std::string describe(const gpu_info& gpu);

/// Fails, naming `ordinal` and what there is, unless cuda:`ordinal` exists on this machine.
void require_device(int ordinal);

/// Device memory on `ordinal`, allocated synchronously (cudaMalloc): for the rare buffer that
/// lives as long as the process. Tensors use the stream-ordered pool (memory_pool.hpp).
void* allocate(std::size_t bytes, int ordinal);
void release(void* pointer, int ordinal) noexcept;

enum class copy_kind { host_to_device, device_to_host, device_to_device };

/// Synchronous copy (waits for the copy to finish).
void copy(void* destination, const void* source, std::size_t bytes, copy_kind kind, int ordinal);

/// Copy enqueued on `stream` (a stream's native() handle) of cuda:`ordinal`; returns at once.
/// Host memory must be pinned (pinned_memory.hpp) for the copy to overlap with other work.
void copy_async(void* destination, const void* source, std::size_t bytes, copy_kind kind,
                void* stream, int ordinal);

/// Sets `bytes` at `destination` to zero, enqueued on `stream` of cuda:`ordinal`.
void zero_async(void* destination, std::size_t bytes, void* stream, int ordinal);

/// Waits until the work enqueued on `stream` (a native handle) of cuda:`ordinal` has run.
void synchronize_stream(void* stream, int ordinal);

/// Makes `ordinal` the calling thread's current device (kernel launches go there).
void use_device(int ordinal);

/// Waits for all work on `ordinal`.
void synchronize(int ordinal);

/// "1.5 GiB", "512 MiB", "96 B": sizes in messages.
std::string format_bytes(std::size_t bytes);

}  // namespace troupe::cuda
