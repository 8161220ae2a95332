// The CUDA interface in a build without nvcc: CUDA memory, streams and events cannot be made, and
// saying so precisely is the whole job.
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/memory_pool.hpp"
#include "runtime/device/pinned_memory.hpp"
#include "runtime/device/stream.hpp"

namespace troupe::cuda {

namespace {
constexpr const char* reason =
    "troupe was built without CUDA (nvcc was not found or -Dcuda=disabled); rebuild with "
    "-Dcuda=enabled on a machine with the CUDA toolkit";
}

bool built_with_cuda() {
  return false;
}
int device_count() {
  return 0;
}
std::string unavailable_reason() {
  return reason;
}
std::vector<gpu_info> visible_gpus() {
  return {};
}
void require_device(int ordinal) {
  fail("cuda:{} is not on this machine: {}", ordinal, reason);
}
void* allocate(std::size_t, int) {
  throw error(reason);
}
void release(void*, int) noexcept {}
void copy(void*, const void*, std::size_t, copy_kind, int) {
  throw error(reason);
}
void copy_async(void*, const void*, std::size_t, copy_kind, void*, int) {
  throw error(reason);
}
void zero_async(void*, std::size_t, void*, int) {
  throw error(reason);
}
void synchronize_stream(void*, int) {
  throw error(reason);
}
void use_device(int) {
  throw error(reason);
}
void synchronize(int) {
  throw error(reason);
}

stream::stream(int ordinal, int) : ordinal_(ordinal), priority_(0), handle_(nullptr) {
  throw error(reason);
}
stream::~stream() = default;
stream::stream(stream&& other) noexcept
    : ordinal_(other.ordinal_), priority_(other.priority_), handle_(nullptr) {}
stream& stream::operator=(stream&&) noexcept {
  return *this;
}
void stream::synchronize() const {}
void stream::wait(const event&) const {}

event::event(int ordinal, bool) : ordinal_(ordinal), handle_(nullptr) {
  throw error(reason);
}
event::~event() = default;
event::event(event&& other) noexcept : ordinal_(other.ordinal_), handle_(nullptr) {}
event& event::operator=(event&&) noexcept {
  return *this;
}
void event::record(const stream&) {}
void event::record(void*) {}
void event::order_before(void*) const {}
void event::synchronize() const {}
bool event::done() const {
  return true;
}
float event::elapsed_ms(const event&, const event&) {
  return 0.0f;
}

void* current_stream(int) {
  return nullptr;
}
stream_guard::stream_guard(const stream& on) : ordinal_(on.device()), previous_(nullptr) {}
stream_guard::stream_guard(int ordinal, void*) : ordinal_(ordinal), previous_(nullptr) {}
stream_guard::~stream_guard() = default;

memory_pool& memory_pool::on(int ordinal) {
  require_device(ordinal);
  throw error(reason);
}
std::vector<memory_pool*> memory_pool::created() {
  return {};
}
memory_pool::memory_pool(int ordinal) : ordinal_(ordinal), handle_(nullptr) {}
memory_pool::~memory_pool() = default;
void* memory_pool::allocate(std::size_t, void*) {
  throw error(reason);
}
void memory_pool::release(void*, void*) noexcept {}
pool_statistics memory_pool::statistics() const {
  return {};
}
void memory_pool::reset_peaks() {}
void memory_pool::set_release_threshold(std::uint64_t) {}
void memory_pool::trim(std::size_t) {}

void* allocate_pinned(std::size_t) {
  throw error(reason);
}
void release_pinned(void*) noexcept {}

}  // namespace troupe::cuda
