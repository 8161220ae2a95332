#include "runtime/exec/bf16_copies.hpp"

#include <map>
#include <mutex>

namespace troupe::bf16_copies {

namespace {

struct entry {
  std::uint16_t* copy = nullptr;
  std::int64_t count = 0;
  bool current = false;
};

struct registry {
  std::mutex mutex;
  std::map<const float*, entry> copies;
  std::uint64_t changes = 0;
};

registry& state() {
  static auto* r = new registry();  // never destroyed: plugins may withdraw during exit
  return *r;
}

}  // namespace

std::int32_t keep(const float* value, std::uint16_t* copy, std::int64_t count) {
  if (value == nullptr || (copy != nullptr && count <= 0)) return 0;
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  ++r.changes;
  if (copy == nullptr) {
    r.copies.erase(value);
    return 1;
  }
  r.copies[value] = {copy, count, false};
  return 1;
}

std::int32_t current(const float* value) {
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  auto it = r.copies.find(value);
  return it != r.copies.end() && it->second.current ? 1 : 0;
}

std::uint16_t* find(const float* value, std::int64_t count) {
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  auto it = r.copies.find(value);
  return it != r.copies.end() && it->second.count == count ? it->second.copy : nullptr;
}

std::uint64_t changes() {
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  return r.changes;
}

namespace {

/// Marks the copies of `values` (those recorded) current or stale.
void mark(const std::vector<const float*>& values, bool current) {
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  for (const float* value : values) {
    auto it = r.copies.find(value);
    if (it != r.copies.end()) it->second.current = current;
  }
}

}  // namespace

void written(const std::vector<const float*>& values) {
  mark(values, true);
}

void invalidate(const std::vector<const float*>& values) {
  mark(values, false);
}

void invalidate_all() {
  registry& r = state();
  const std::lock_guard lock(r.mutex);
  for (auto& [value, e] : r.copies) e.current = false;
}

}  // namespace troupe::bf16_copies
