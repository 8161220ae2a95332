#pragma once

// Holding an engine's instance threads between two steps while a control command (a plugin
// swap, a re-placement of the experts) works on their models from another thread. Each
// instance thread checks the hold at its step boundary (an idle one is woken for it) and waits
// there; the holder's work runs once every instance thread waits, then they go on. Requests keep
// arriving meanwhile: they queue as usual.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>

#include "runtime/core/error.hpp"

namespace troupe {

/// The engine stopped before or during a hold: nothing of the hold's work ran.
class engine_stopping : public error {
 public:
  engine_stopping() : error("the server is stopping") {}
};

/// Every member is guarded by the engine's mutex and signalled through the condition variable its
/// threads wait on; `stopping` is the engine's flag (under the same mutex).
class step_hold {
 public:
  /// `threads`: the instance threads that must wait (remote decoders' threads touch no model).
  explicit step_hold(std::size_t threads) : threads_(threads) {}

  /// Whether a hold is asked for: an idle instance thread's wait wakes for it.
  bool asked() const { return asked_; }

  /// An instance thread at its step boundary, holding `lock`: waits while a hold is on.
  void wait_here(std::unique_lock<std::mutex>& lock, std::condition_variable& wake,
                 const bool& stopping) {
    if (!asked_) return;
    ++waiting_;
    wake.notify_all();
    wake.wait(lock, [&] { return !asked_ || stopping; });
    --waiting_;
  }

  /// Runs `work` on this thread once every instance thread waits at a step boundary (one hold at
  /// a time); returns the seconds from the request to the release. Throws engine_stopping when the
  /// engine stops first; what `work` throws goes on after the release. The engine (its mutex, its
  /// models) must outlive the call: its owner ends every hold before it destroys the engine.
  double run(std::mutex& mutex, std::condition_variable& wake, const bool& stopping,
             const std::function<void()>& work) {
    const auto start = std::chrono::steady_clock::now();
    std::unique_lock lock(mutex);
    wake.wait(lock, [&] { return !holding_ || stopping; });
    if (stopping) throw engine_stopping();
    holding_ = asked_ = true;
    wake.notify_all();
    wake.wait(lock, [&] { return waiting_ == threads_ || stopping; });
    std::exception_ptr failure;
    if (stopping) {
      failure = std::make_exception_ptr(engine_stopping());
    } else {
      lock.unlock();
      try {
        work();
      } catch (...) {
        failure = std::current_exception();
      }
      lock.lock();
    }
    holding_ = asked_ = false;
    wake.notify_all();
    lock.unlock();
    if (failure) std::rethrow_exception(failure);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

 private:
  std::size_t threads_;
  std::size_t waiting_ = 0;
  bool asked_ = false;    ///< the instance threads are to wait at their next boundary
  bool holding_ = false;  ///< a hold is on (asked, or its work running)
};

}  // namespace troupe
