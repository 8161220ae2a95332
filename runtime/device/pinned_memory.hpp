#pragma once

// Page-locked host memory: copies between it and a GPU run asynchronously on a stream (from
// pageable memory the driver stages them through a buffer of its own and the copy blocks).

#include <cstddef>

namespace troupe::cuda {

/// `bytes` of pinned host memory, usable by every device. Fails naming the size.
void* allocate_pinned(std::size_t bytes);
void release_pinned(void* pointer) noexcept;

}  // namespace troupe::cuda
