#include "runtime/transport/buffer_pool.hpp"

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "runtime/core/error.hpp"

namespace troupe {

struct buffer_pool::shelves {
  std::mutex mutex;
  std::size_t max_cached = 0;
  std::size_t cached = 0;
  std::map<std::size_t, std::vector<void*>> free;  // by rounded size
  bool open = true;                                // false once the pool is gone

  ~shelves() {
    for (auto& [size, buffers] : free)
      for (void* b : buffers) std::free(b);
  }
};

namespace {

constexpr std::size_t alignment = 256;

std::size_t rounded(std::size_t bytes) {
  const std::size_t unit = bytes >= (64u << 10) ? 4096 : alignment;
  return std::max(unit, (bytes + unit - 1) / unit * unit);
}

}  // namespace

buffer_pool::buffer_pool(std::size_t max_cached_bytes) : shelves_(std::make_shared<shelves>()) {
  shelves_->max_cached = max_cached_bytes;
}

buffer_pool::~buffer_pool() {
  std::lock_guard lock(shelves_->mutex);
  shelves_->open = false;
}

std::shared_ptr<storage> buffer_pool::take(std::size_t bytes) {
  const std::size_t size = rounded(bytes);
  void* buffer = nullptr;
  {
    std::lock_guard lock(shelves_->mutex);
    auto it = shelves_->free.find(size);
    if (it != shelves_->free.end() && !it->second.empty()) {
      buffer = it->second.back();
      it->second.pop_back();
      shelves_->cached -= size;
    }
  }
  if (buffer == nullptr) buffer = std::aligned_alloc(alignment, size);
  if (buffer == nullptr) fail("out of host memory allocating a {}-byte receive buffer", bytes);
  // Back to the shelf when the last tensor goes (the shelves outlive the pool if need be).
  std::weak_ptr<shelves> home = shelves_;
  return std::make_shared<storage>(buffer, bytes, device::cpu(), [home, buffer, size] {
    if (auto s = home.lock()) {
      std::lock_guard lock(s->mutex);
      if (s->open && s->cached + size <= s->max_cached) {
        s->free[size].push_back(buffer);
        s->cached += size;
        return;
      }
    }
    std::free(buffer);
  });
}

std::size_t buffer_pool::cached_bytes() const {
  std::lock_guard lock(shelves_->mutex);
  return shelves_->cached;
}

}  // namespace troupe
