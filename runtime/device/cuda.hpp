#pragma once

// The runtime's only window onto the CUDA runtime API. A build without nvcc compiles
// cuda_absent.cpp instead of cuda_runtime.cpp: every call then reports that CUDA is not built in,
// so the rest of the runtime never needs an #ifdef.

#include <cstddef>
#include <string>

namespace troupe::cuda {

/// True when this build compiled the CUDA kernels and links the CUDA runtime.
bool built_with_cuda();

/// Number of usable CUDA devices; 0 when CUDA is not built in, no driver or no GPU. Never throws.
int device_count();

/// Why device_count() is 0 ("built without CUDA", the driver's error string, ...); "" otherwise.
std::string unavailable_reason();

/// Device memory on `ordinal`. Throws troupe::error naming the device and the CUDA error.
void* allocate(std::size_t bytes, int ordinal);
void release(void* pointer, int ordinal) noexcept;

enum class copy_kind { host_to_device, device_to_host, device_to_device };

/// Synchronous copy (waits for the copy to finish).
void copy(void* destination, const void* source, std::size_t bytes, copy_kind kind, int ordinal);

/// Makes `ordinal` the calling thread's current device (kernel launches go there).
void use_device(int ordinal);

/// Waits for all work on `ordinal`.
void synchronize(int ordinal);

}  // namespace troupe::cuda
