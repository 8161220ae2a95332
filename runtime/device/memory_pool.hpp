#pragma once

// Device memory for tensors: CUDA's stream-ordered allocator (cudaMallocFromPoolAsync on a pool
// of troupe's own per device) rather than a home-made caching allocator. Memory freed on a
// stream is reused by later allocations on that stream without a synchronisation; the pool keeps
// what it has reserved up to its release threshold. Out of memory is a troupe::error that says
// how much was asked and how much is free, never an abort.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace troupe::cuda {

/// What a pool holds, in bytes.
struct pool_statistics {
  std::uint64_t reserved = 0;       ///< taken from the device by the pool
  std::uint64_t in_use = 0;         ///< handed out to tensors and not yet freed
  std::uint64_t peak_reserved = 0;  ///< highest `reserved` since creation or reset_peaks()
  std::uint64_t peak_in_use = 0;    ///< highest `in_use` since creation or reset_peaks()
};

class memory_pool {
 public:
  /// The process's pool on cuda:`ordinal`, created on first use. Its release threshold starts
  /// at "keep everything": memory once reserved is reused, not returned at each synchronisation.
  static memory_pool& on(int ordinal);

  /// The pools made so far (none in a process that has not touched a GPU), by device.
  static std::vector<memory_pool*> created();

  /// `bytes` (at least 1) of device memory, usable by work enqueued on `stream` after this call.
  /// Fails with the sizes asked, free and reserved when the device is out of memory.
  void* allocate(std::size_t bytes, void* stream);
  /// Frees `pointer` once the work enqueued on `stream` so far has run.
  void release(void* pointer, void* stream) noexcept;

  pool_statistics statistics() const;
  void reset_peaks();
  /// Reserved memory above `bytes` goes back to the device at the next synchronisation.
  void set_release_threshold(std::uint64_t bytes);
  /// Returns unused reserved memory to the device now, keeping at least `keep_bytes`.
  void trim(std::size_t keep_bytes = 0);

  int device() const { return ordinal_; }

  memory_pool(const memory_pool&) = delete;
  memory_pool& operator=(const memory_pool&) = delete;

 private:
  explicit memory_pool(int ordinal);
  ~memory_pool();

  int ordinal_;
  void* handle_;  // cudaMemPool_t
};

}  // namespace troupe::cuda
