#pragma once

// The threads http_server runs its handlers on: a request that finds none idle gets a new one, up
// to a cap; they stay until the server stops.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace troupe::http_server_detail {

/// Threads for handlers: a request that finds none idle gets a new one, up to `cap`; they stay
/// until the server stops (a job's endpoint sees a few operators, not a crowd).
class handler_threads {
 public:
  explicit handler_threads(std::size_t cap) : cap_(cap) {}
  ~handler_threads() { stop(); }

  /// Runs `task` on an idle thread or a new one; false when `cap` are busy or it is stopping.
  bool run(std::function<void()> task) {
    std::lock_guard lock(mutex_);
    if (stopping_) return false;
    if (idle_ == 0) {
      if (threads_.size() >= cap_) return false;
      try {
        threads_.emplace_back([this] { work(); });
      } catch (const std::system_error&) {
        return false;  // no thread to be had
      }
    } else {
      --idle_;  // claimed: the next idle thread to wake takes it
    }
    tasks_.push_back(std::move(task));
    wake_.notify_one();
    return true;
  }

  /// Lets the threads finish what they were given, then joins them.
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    // NOTES: run() adds no thread once stopping_ is set, so threads_ is ours alone here.
    for (auto& thread : threads_)
      if (thread.joinable()) thread.join();
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      auto task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      task = nullptr;  // what it holds goes before the thread counts as idle
      lock.lock();
      ++idle_;
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  std::size_t idle_ = 0;  // threads free for a task nobody has claimed yet
  const std::size_t cap_;
  bool stopping_ = false;
};

}  // namespace troupe::http_server_detail
