#include "runtime/tensor/host_pool.hpp"

#include <unistd.h>

#include <cstdlib>
#include <string_view>

#include "runtime/core/error.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define TROUPE_HOST_POOL_BYPASS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TROUPE_HOST_POOL_BYPASS 1
#endif
#endif
#ifndef TROUPE_HOST_POOL_BYPASS
#define TROUPE_HOST_POOL_BYPASS 0
#endif

namespace troupe {

namespace {

constexpr std::size_t alignment = 256;
constexpr std::size_t smallest_pooled = 64 * 1024;
constexpr std::size_t page = 4096;

}  // namespace

host_pool& host_pool::global() {
  // A quarter of the machine's memory at most kept free: a step's working set, not a hoard.
  // NOTES: never destroyed: tensors held by other statics are freed after main returns.
  static host_pool* pool = new host_pool([] {
    // TROUPE_HOST_POOL=0 keeps nothing (every block goes back at once): for A/B measurements
    // and memory debuggers.
    if (const char* setting = std::getenv("TROUPE_HOST_POOL");
        setting != nullptr && std::string_view(setting) == "0")
      return std::size_t{0};
    const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && size > 0
               ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(size) / 4
               : std::size_t{1} << 30;
  }());
  return *pool;
}

bool host_pool::pooling() {
  return !TROUPE_HOST_POOL_BYPASS;
}

host_pool::host_pool(std::size_t limit) : limit_(limit) {}

host_pool::~host_pool() {
  trim();
}

std::size_t host_pool::block_size(std::size_t bytes) {
  return (bytes + page - 1) / page * page;
}

void* host_pool::allocate(std::size_t bytes) {
  if (bytes < smallest_pooled || TROUPE_HOST_POOL_BYPASS) {
    const std::size_t rounded =
        bytes == 0 ? alignment : (bytes + alignment - 1) / alignment * alignment;
    void* pointer = std::aligned_alloc(alignment, rounded);
    if (pointer == nullptr) fail("out of host memory allocating {} bytes", bytes);
    return pointer;
  }
  const std::size_t size = block_size(bytes);
  std::lock_guard lock(mutex_);
  // NOTES: the smallest kept block that fits, if it wastes at most an eighth: a step asks for
  // the same sizes again, so exact fits are the rule; a much larger block stays for its size.
  const auto it = free_.lower_bound(size);
  if (it != free_.end() && it->first <= size + size / 8) {
    void* pointer = it->second;
    live_.emplace(pointer, it->first);
    stats_.kept_bytes -= it->first;
    free_.erase(it);
    ++stats_.reused;
    return pointer;
  }
  void* pointer = std::aligned_alloc(page, size);
  if (pointer == nullptr) fail("out of host memory allocating {} bytes", bytes);
  live_.emplace(pointer, size);
  ++stats_.fresh;
  return pointer;
}

void host_pool::release(void* pointer) {
  if (pointer == nullptr) return;
  {
    std::lock_guard lock(mutex_);
    const auto it = live_.find(pointer);
    if (it == live_.end()) {
      std::free(pointer);  // a small block: malloc's
      return;
    }
    const std::size_t size = it->second;
    live_.erase(it);
    if (stats_.kept_bytes + size <= limit_) {
      free_.emplace(size, pointer);
      stats_.kept_bytes += size;
      return;
    }
  }
  std::free(pointer);
}

void host_pool::trim() {
  std::multimap<std::size_t, void*> blocks;
  {
    std::lock_guard lock(mutex_);
    blocks.swap(free_);
    stats_.kept_bytes = 0;
  }
  for (const auto& [size, pointer] : blocks) std::free(pointer);
}

host_pool::statistics host_pool::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace troupe
