#pragma once

// Host buffers for received tensors, recycled. A tensor that arrives over UCX lands in memory
// of its exact size; fresh memory costs a page fault per 4 KiB on first touch (a 64 MiB tensor:
// 16k faults, more than the copy itself), so buffers come back here when their last tensor goes
// and serve the next arrival of the same size (training sends the same sizes every step).

#include <cstddef>
#include <memory>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

class buffer_pool {
 public:
  /// Keeps at most `max_cached_bytes` of free buffers; beyond that, freed buffers are released.
  explicit buffer_pool(std::size_t max_cached_bytes);
  ~buffer_pool();
  buffer_pool(const buffer_pool&) = delete;
  buffer_pool& operator=(const buffer_pool&) = delete;

  /// Host memory of `bytes` (256-byte aligned), a recycled buffer of that size when there is
  /// one. Thread-safe; the storage may outlive the pool.
  std::shared_ptr<storage> take(std::size_t bytes);

  /// Bytes held free right now.
  std::size_t cached_bytes() const;

  struct shelves;

 private:
  std::shared_ptr<shelves> shelves_;
};

}  // namespace troupe
