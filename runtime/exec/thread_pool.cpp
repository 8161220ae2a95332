#include "runtime/exec/thread_pool.hpp"

#include <algorithm>
#include <chrono>
#include <thread>

namespace troupe {

struct thread_pool::job {
  const std::function<void(std::int64_t, std::int64_t)>* body = nullptr;
  std::int64_t count = 0;
  std::int64_t chunk_size = 1;
  std::int64_t chunks = 0;
  std::int64_t next_chunk = 0;  // guarded by the pool's mutex
  std::atomic<std::int64_t> finished_chunks{0};
  std::exception_ptr failure;  // guarded by the pool's mutex
};

namespace {
// The pool whose worker runs on this thread, if any: a parallel_for from inside a chunk works on
// its own job instead of waiting, so nested calls always make progress.
thread_local const thread_pool* worker_of = nullptr;
}  // namespace

thread_pool::thread_pool(int threads) {
  const int workers = threads > 1 ? threads : 0;
  workers_.reserve(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { worker_loop(); });
  abi_.self = this;
  abi_.num_threads = size();
  abi_.parallel_for = [](void* self, std::int64_t count, std::int64_t min_chunk, troupe_range_fn fn,
                         void* arg) {
    const std::function<void(std::int64_t, std::int64_t)> body =
        [fn, arg](std::int64_t begin, std::int64_t end) { fn(arg, begin, end); };
    static_cast<thread_pool*>(self)->parallel_for(count, min_chunk, body);
  };
}

thread_pool::~thread_pool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (auto& worker : workers_) worker.join();
}

bool thread_pool::take_chunk(std::unique_lock<std::mutex>&, job*& picked, std::int64_t& chunk) {
  for (job* candidate : jobs_) {
    if (candidate->next_chunk < candidate->chunks) {
      picked = candidate;
      chunk = candidate->next_chunk++;
      return true;
    }
  }
  return false;
}

void thread_pool::run_chunk(job& work, std::int64_t chunk) {
  const std::int64_t begin = chunk * work.chunk_size;
  const std::int64_t end = std::min(work.count, begin + work.chunk_size);
  try {
    (*work.body)(begin, end);
  } catch (...) {
    std::lock_guard lock(mutex_);
    if (!work.failure) work.failure = std::current_exception();
  }
  // NOTES: once the last chunk is counted the owner may return and reuse the memory of `work`
  // for its next job, so everything needed is read before the increment.
  const std::int64_t chunks = work.chunks;
  if (work.finished_chunks.fetch_add(1) + 1 == chunks) {
    std::lock_guard lock(mutex_);
    job_finished_.notify_all();
  }
}

void thread_pool::worker_loop() {
  worker_of = this;
  std::unique_lock lock(mutex_);
  while (true) {
    job* picked = nullptr;
    std::int64_t chunk = 0;
    if (!take_chunk(lock, picked, chunk) && !stopping_) {
      // NOTES: a job follows the last within microseconds (the caller's glue between two ops),
      // and waking a sleeping worker takes tens of them, which the job's other worker spends
      // idle (a GEMM cut in two waits for its second half). So a worker without work watches
      // for the next job for 100 us first, yielding its core to any thread with work (the
      // caller's glue among them): in the small-512 step the idle time of jobs of two pieces fell
      // from 107 to 41 core-ms per step, the step by 2.5% (docs/benchmarks.md).
      const std::uint64_t seen = submitted_.load();
      lock.unlock();
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (submitted_.load(std::memory_order_relaxed) == seen &&
             std::chrono::steady_clock::now() < until)
        std::this_thread::yield();
      lock.lock();
    }
    if (picked == nullptr)
      work_ready_.wait(lock, [&] { return stopping_ || take_chunk(lock, picked, chunk); });
    if (picked == nullptr) return;  // stopping and no work left
    lock.unlock();
    run_chunk(*picked, chunk);
    lock.lock();
  }
}

void thread_pool::parallel_for(std::int64_t count, std::int64_t min_chunk,
                               const std::function<void(std::int64_t, std::int64_t)>& body) {
  if (count <= 0) return;
  min_chunk = std::max<std::int64_t>(min_chunk, 1);
  // A few chunks per thread balance uneven chunks without much scheduling overhead.
  const std::int64_t target_chunks = static_cast<std::int64_t>(size()) * 4;
  const bool inside_worker = worker_of == this;
  const std::int64_t chunk_size = std::max(min_chunk, (count + target_chunks - 1) / target_chunks);
  const std::int64_t chunks = (count + chunk_size - 1) / chunk_size;
  if (chunks == 1 || workers_.empty()) {
    body(0, count);
    return;
  }
  job work;
  work.body = &body;
  work.count = count;
  work.chunk_size = chunk_size;
  work.chunks = chunks;
  std::unique_lock lock(mutex_);
  jobs_.push_back(&work);
  submitted_.fetch_add(1);
  work_ready_.notify_all();
  // NOTES: a caller from outside (an actor's thread) only waits, so the cores run exactly the
  // pool's workers however many actors compute at once. A worker calling from inside a chunk
  // works on its own job only, so a nested call always makes progress.
  while (inside_worker && work.next_chunk < work.chunks) {
    const std::int64_t chunk = work.next_chunk++;
    lock.unlock();
    run_chunk(work, chunk);
    lock.lock();
  }
  job_finished_.wait(lock, [&] { return work.finished_chunks.load() == work.chunks; });
  jobs_.erase(std::find(jobs_.begin(), jobs_.end(), &work));
  if (work.failure) std::rethrow_exception(work.failure);
}

}  // namespace troupe
