// Streams, events and each thread's current stream over the CUDA runtime API.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda_check.hpp"
#include "runtime/device/stream.hpp"

namespace troupe::cuda {

namespace {

cudaStream_t as_stream(void* handle) {
  return static_cast<cudaStream_t>(handle);
}
cudaEvent_t as_event(void* handle) {
  return static_cast<cudaEvent_t>(handle);
}

// NOTES: one slot per device ordinal; nullptr means "no guard": CUDA's per-thread default
// stream, which unlike the legacy default stream does not serialise with every other stream.
thread_local std::vector<void*> current_streams;

}  // namespace

namespace {

/// Stream handles given back by destroyed streams, by device and priority.
std::mutex recycled_guard;
std::map<std::pair<int, int>, std::vector<cudaStream_t>> recycled;

}  // namespace

stream::stream(int ordinal, int priority) : ordinal_(ordinal), priority_(0), handle_(nullptr) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  int least = 0, greatest = 0;
  TROUPE_CUDA_CALL(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  priority_ = std::clamp(priority, greatest, least);  // CUDA: greatest priority is the lowest value
  {
    std::lock_guard lock(recycled_guard);
    auto& free = recycled[{ordinal_, priority_}];
    if (!free.empty()) {
      handle_ = free.back();
      free.pop_back();
      return;
    }
  }
  cudaStream_t created = nullptr;
  TROUPE_CUDA_CALL(cudaStreamCreateWithPriority(&created, cudaStreamNonBlocking, priority_));
  handle_ = created;
}

stream::~stream() {
  if (handle_ == nullptr) return;
  try {
    std::lock_guard lock(recycled_guard);
    recycled[{ordinal_, priority_}].push_back(as_stream(handle_));
  } catch (...) {  // out of memory for the list: the handle is leaked, never destroyed in use
  }
}

stream::stream(stream&& other) noexcept
    : ordinal_(other.ordinal_),
      priority_(other.priority_),
      handle_(std::exchange(other.handle_, nullptr)) {}

stream& stream::operator=(stream&& other) noexcept {
  if (this != &other) {
    this->~stream();
    ordinal_ = other.ordinal_;
    priority_ = other.priority_;
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

void stream::synchronize() const {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal_));
  TROUPE_CUDA_CALL(cudaStreamSynchronize(as_stream(handle_)));
}

void stream::wait(const event& done) const {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal_));
  TROUPE_CUDA_CALL(cudaStreamWaitEvent(as_stream(handle_), as_event(done.native()), 0));
}

event::event(int ordinal, bool timing) : ordinal_(ordinal), handle_(nullptr) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal));
  cudaEvent_t created = nullptr;
  TROUPE_CUDA_CALL(cudaEventCreateWithFlags(&created, timing ? 0u : cudaEventDisableTiming));
  handle_ = created;
}

event::~event() {
  if (handle_ == nullptr) return;
  (void)cudaSetDevice(ordinal_);
  (void)cudaEventDestroy(as_event(handle_));
}

event::event(event&& other) noexcept
    : ordinal_(other.ordinal_), handle_(std::exchange(other.handle_, nullptr)) {}

event& event::operator=(event&& other) noexcept {
  if (this != &other) {
    this->~event();
    ordinal_ = other.ordinal_;
    handle_ = std::exchange(other.handle_, nullptr);
  }
  return *this;
}

void event::record(const stream& on) {
  record(on.native());
}

void event::record(void* native_stream) {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal_));
  TROUPE_CUDA_CALL(cudaEventRecord(as_event(handle_), as_stream(native_stream)));
}

void event::order_before(void* native_stream) const {
  TROUPE_CUDA_CALL(cudaSetDevice(ordinal_));
  TROUPE_CUDA_CALL(cudaStreamWaitEvent(as_stream(native_stream), as_event(handle_), 0));
}

void event::synchronize() const {
  TROUPE_CUDA_CALL(cudaEventSynchronize(as_event(handle_)));
}

bool event::done() const {
  const cudaError_t status = cudaEventQuery(as_event(handle_));
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  TROUPE_CUDA_CALL(status);
  return true;
}

float event::elapsed_ms(const event& start, const event& end) {
  float ms = 0.0f;
  TROUPE_CUDA_CALL(cudaEventElapsedTime(&ms, as_event(start.handle_), as_event(end.handle_)));
  return ms;
}

void* current_stream(int ordinal) {
  const auto slot = static_cast<std::size_t>(ordinal);
  if (slot < current_streams.size() && current_streams[slot] != nullptr)
    return current_streams[slot];
  return cudaStreamPerThread;
}

stream_guard::stream_guard(const stream& on) : stream_guard(on.device(), on.native()) {}

stream_guard::stream_guard(int ordinal, void* native_stream) : ordinal_(ordinal) {
  const auto slot = static_cast<std::size_t>(ordinal_);
  if (current_streams.size() <= slot) current_streams.resize(slot + 1, nullptr);
  previous_ = std::exchange(current_streams[slot], native_stream);
}

stream_guard::~stream_guard() {
  current_streams[static_cast<std::size_t>(ordinal_)] = previous_;
}

}  // namespace troupe::cuda
