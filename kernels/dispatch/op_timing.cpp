#include "kernels/dispatch/op_timing.hpp"

#include <dlfcn.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/dispatch/device_ops.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace troupe::kernels {

namespace {

struct closed_scope {
  op_class what;
  const char* function;
  std::string detail;
  int device;
  void* start;
  void* end;
};

struct timing_state {
  std::atomic<bool> on{false};
  std::atomic<bool> details{false};
  std::mutex mutex;
  std::vector<closed_scope> closed;
  std::map<int, std::vector<void*>> spare_events;  // cudaEvent_t per device
};

}  // namespace

}  // namespace troupe::kernels

// NOTES: plugins link their own copy of kernels/dispatch with its symbols hidden
// (--exclude-libs), so a plain static would give each plugin its own state. The runtime library
// exports this function; every copy asks the dynamic linker for it first and uses the state it
// returns, falling back to its own when there is none (a program without libtroupe).
extern "C" __attribute__((visibility("default"))) void* troupe_op_timing_state_v3() {
  static troupe::kernels::timing_state state;
  return &state;
}

// NOTES: the nesting depth of this thread's scopes, found the same way. Besides counting one
// scope stack across the runtime's and the plugins' code, this keeps thread-local storage out of
// the plugins: a dlopen'd library's TLS is allocated per thread by glibc and freed at its exit
// (_dl_deallocate_tls), where ThreadSanitizer reports races it cannot see the ordering of.
extern "C" __attribute__((visibility("default"))) int* troupe_op_timing_depth_v3() {
  thread_local int depth = 0;
  return &depth;
}

namespace troupe::kernels {

namespace {

int& depth() {
  static int* (*const get)() = [] {
    void* found = dlsym(RTLD_DEFAULT, "troupe_op_timing_depth_v3");
    using getter = int* (*)();
    return found != nullptr ? reinterpret_cast<getter>(found) : &troupe_op_timing_depth_v3;
  }();
  return *get();
}

timing_state& state() {
  static timing_state* shared = [] {
    void* found = dlsym(RTLD_DEFAULT, "troupe_op_timing_state_v3");
    using getter = void* (*)();
    return static_cast<timing_state*>(found != nullptr ? reinterpret_cast<getter>(found)()
                                                       : troupe_op_timing_state_v3());
  }();
  return *shared;
}

#if TROUPE_HAVE_CUDA
void* take_event(timing_state& s, int device) {
  {
    std::lock_guard lock(s.mutex);
    auto& spare = s.spare_events[device];
    if (!spare.empty()) {
      void* event = spare.back();
      spare.pop_back();
      return event;
    }
  }
  cudaEvent_t event = nullptr;
  if (cudaEventCreate(&event) != cudaSuccess) return nullptr;
  return event;
}
#endif

}  // namespace

const char* name(op_class c) {
  switch (c) {
    case op_class::attention:
      return "attention";
    case op_class::expert_gemm:
      return "expert GEMMs";
    case op_class::dense_gemm:
      return "dense GEMMs";
    case op_class::routing:
      return "routing and permutation";
    case op_class::elementwise:
      return "norm, rope, elementwise";
    case op_class::loss:
      return "cross-entropy";
    case op_class::optimizer:
      return "optimizer";
    case op_class::host_copies:
      return "copies to and from the host";
  }
  return "?";
}

namespace {

/// "ops::rmsnorm_forward" of "void troupe::kernels::ops::rmsnorm_forward(...)".
[[maybe_unused]] std::string short_name(const char* function) {
  std::string name(function);
  const std::size_t open = name.find('(');
  if (open != std::string::npos) name.resize(open);
  const std::size_t space = name.rfind(' ');
  if (space != std::string::npos) name.erase(0, space + 1);
  for (const char* prefix : {"troupe::kernels::", "troupe::"})
    if (name.rfind(prefix, 0) == 0) {
      name.erase(0, std::string(prefix).size());
      break;
    }
  return name;
}

}  // namespace

op_scope::op_scope(const troupe_exec_context* context, op_class c, const char* function) {
  int& nesting = depth();
  ++nesting;
#if TROUPE_HAVE_CUDA
  timing_state& s = state();
  if (nesting != 1 || !s.on.load(std::memory_order_relaxed) || !on_gpu(context)) return;
  device_ = context->device.device_id;
  start_ = take_event(s, device_);
  if (start_ == nullptr) return;
  stream_ = context->stream;
  class_ = c;
  function_ = function;
  (void)cudaEventRecord(static_cast<cudaEvent_t>(start_), static_cast<cudaStream_t>(stream_));
#else
  (void)context, (void)c, (void)function;
#endif
}

op_scope::~op_scope() {
  --depth();
#if TROUPE_HAVE_CUDA
  if (stream_ == nullptr) return;
  timing_state& s = state();
  void* end = take_event(s, device_);
  if (end == nullptr) return;
  (void)cudaEventRecord(static_cast<cudaEvent_t>(end), static_cast<cudaStream_t>(stream_));
  std::lock_guard lock(s.mutex);
  s.closed.push_back({class_, function_, std::move(detail_), device_, start_, end});
#endif
}

bool op_scope::wants_detail() const {
  return stream_ != nullptr && state().details.load(std::memory_order_relaxed);
}

void op_scope::detail(std::string text) {
  detail_ = std::move(text);
}

namespace op_timing {

void enable(bool on) {
  state().on.store(on);
}

bool enabled() {
  return state().on.load();
}

void enable_details(bool on) {
  state().details.store(on);
}

bool details() {
  return state().details.load();
}

times collect() {
  times totals;
  timing_state& s = state();
  std::vector<closed_scope> closed;
  {
    std::lock_guard lock(s.mutex);
    closed.swap(s.closed);
  }
#if TROUPE_HAVE_CUDA
  for (const closed_scope& c : closed) {
    float ms = 0.0f;
    if (cudaEventSynchronize(static_cast<cudaEvent_t>(c.end)) == cudaSuccess &&
        cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(c.start),
                             static_cast<cudaEvent_t>(c.end)) == cudaSuccess) {
      totals.classes[static_cast<std::size_t>(c.what)] += static_cast<double>(ms);
      std::string key = short_name(c.function);
      if (!c.detail.empty()) key += " " + c.detail;
      totals.functions[key] += static_cast<double>(ms);
    }
  }
  std::lock_guard lock(s.mutex);
  for (const closed_scope& c : closed) {
    s.spare_events[c.device].push_back(c.start);
    s.spare_events[c.device].push_back(c.end);
  }
#endif
  return totals;
}

}  // namespace op_timing

}  // namespace troupe::kernels
