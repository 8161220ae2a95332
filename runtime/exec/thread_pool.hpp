#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/abi/troupe_plugin.h"

namespace troupe {

/// The compute worker pool: `threads` workers, one per core given to compute. parallel_for splits
/// a range into chunks the workers run while the caller waits, so however many actors compute at
/// once, the cores run only the workers. Several callers' jobs share the workers. A call from
/// inside a chunk works on its own job (nested calls never wait on a busy pool).
class thread_pool {
 public:
  /// A pool of 1 (or less) has no workers and runs everything inline on the caller.
  explicit thread_pool(int threads);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  int size() const { return std::max(static_cast<int>(workers_.size()), 1); }

  /// Runs body(begin, end) over chunks of at least `min_chunk` items covering [0, count).
  /// An exception from a chunk is rethrown here after every chunk has finished.
  void parallel_for(std::int64_t count, std::int64_t min_chunk,
                    const std::function<void(std::int64_t, std::int64_t)>& body);

  /// The pool as the plugin ABI sees it; valid while the pool lives.
  const troupe_thread_pool* abi() const { return &abi_; }

 private:
  struct job;
  void worker_loop();
  /// Takes the next chunk of the oldest job that has one; false when none has.
  bool take_chunk(std::unique_lock<std::mutex>& lock, job*& picked, std::int64_t& chunk);
  void run_chunk(job& work, std::int64_t chunk);

  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable job_finished_;
  std::deque<job*> jobs_;
  bool stopping_ = false;
  std::atomic<std::uint64_t> submitted_{0};  ///< jobs pushed so far (an idle worker watches it)
  std::vector<std::thread> workers_;
  troupe_thread_pool abi_{};
};

}  // namespace troupe
