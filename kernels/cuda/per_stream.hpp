#pragma once

// One T per CUDA stream, made on first use and kept until forgotten: how GEMM engines keep a
// workspace and an algorithm cache per stream when all a call carries is the stream.

#include <map>
#include <memory>
#include <mutex>

namespace troupe::kernels::cuda {

template <class T>
class per_stream {
 public:
  /// The T of `stream`, made as T(ordinal, stream) the first time.
  T& on(int ordinal, void* stream) {
    std::lock_guard lock(mutex_);
    auto& slot = by_stream_[stream];
    if (!slot) slot = std::make_unique<T>(ordinal, stream);
    return *slot;
  }

  /// Drops the T of `stream` (before the stream is destroyed).
  void forget(void* stream) {
    std::unique_ptr<T> gone;  // destroyed after the lock is released
    std::lock_guard lock(mutex_);
    if (auto it = by_stream_.find(stream); it != by_stream_.end()) {
      gone = std::move(it->second);
      by_stream_.erase(it);
    }
  }

 private:
  std::mutex mutex_;
  std::map<void*, std::unique_ptr<T>> by_stream_;
};

}  // namespace troupe::kernels::cuda
