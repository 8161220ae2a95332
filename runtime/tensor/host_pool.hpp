#pragma once

// Host memory for tensors and for the plugins' buffers (the exec context's allocator), kept for
// reuse. A training step allocates the same large buffers
// every step (activations, saved tensors, gradients, workspaces); given back to the system and
// taken again, each of their pages faults and is zeroed by the kernel anew (15% of a small-512
// step's time went to clear_page_erms). The pool keeps freed blocks of 64 KiB or more and hands
// them to the next allocation that fits, so a steady-state step faults almost no new pages.
// Smaller blocks go to malloc, whose arenas keep them anyway. Thread-safe.
//
// NOTES: under AddressSanitizer the pool steps aside (every block goes back to the system), so
// that a use after free is still caught.

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace troupe {

class host_pool {
 public:
  /// The process's pool.
  static host_pool& global();
  /// False where the pool steps aside (AddressSanitizer builds).
  static bool pooling();

  /// `limit`: the bytes of free blocks kept at most; past it a freed block goes back at once.
  explicit host_pool(std::size_t limit);
  ~host_pool();
  host_pool(const host_pool&) = delete;
  host_pool& operator=(const host_pool&) = delete;

  /// At least `bytes`, aligned to 256 bytes; throws troupe::error when the system has none.
  void* allocate(std::size_t bytes);
  /// Gives back a block from allocate().
  void release(void* pointer);
  /// Frees every kept block.
  void trim();

  struct statistics {
    std::size_t kept_bytes = 0;  ///< free blocks held for reuse
    std::uint64_t reused = 0;    ///< allocations served from them
    std::uint64_t fresh = 0;     ///< pooled-size allocations the system served
  };
  statistics stats() const;

 private:
  /// The size a pooled block of `bytes` is allocated with (whole pages).
  static std::size_t block_size(std::size_t bytes);

  const std::size_t limit_;
  mutable std::mutex mutex_;
  std::multimap<std::size_t, void*> free_;       ///< by block size
  std::unordered_map<void*, std::size_t> live_;  ///< pooled blocks handed out, and their sizes
  statistics stats_;
};

}  // namespace troupe
