#pragma once

// The decode loop of a server: requests from any thread join a batch_decoder that one thread
// steps for as long as there is work (continuous batching), each request's tokens go to its
// callback as they come and its result to its future. The queue of requests not yet in the
// batch is bounded; a request past the bound is refused at once (`troupe serve` answers 429).
// A request that cannot fit the cache fails alone; the others go on.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/core/error.hpp"
#include "runtime/inference/batch_decoder.hpp"
#include "runtime/serve/serving_metrics.hpp"

namespace troupe {

struct serving_options {
  std::int64_t max_batch = 32;               ///< sequences decoded together
  std::int64_t max_queue = 256;              ///< requests waiting to join the batch
  std::int64_t prefill_chunk = 0;            ///< prompt tokens a sequence reads per step (0: whole)
  metrics_registry* metrics = nullptr;       ///< tokens generated, speculative drafts
  serving_metrics* serve_metrics = nullptr;  ///< latency, queue, batch, cache
};

/// The queue is full: the request was not taken.
class queue_full : public error {
 public:
  using error::error;
};

class serving_engine {
 public:
  using ticket = std::uint64_t;
  /// Called on the engine's thread with each new token of a request.
  using token_callback = std::function<void(std::int32_t)>;
  /// Called once a request's future is ready (its result or its error), on the thread that
  /// readied it; must not block.
  using done_callback = std::function<void()>;

  serving_engine(cached_model& model, latent_cache& cache, const exec_context& context,
                 serving_options options = {});
  /// Stops the thread; requests still queued or decoding fail with troupe::error.
  ~serving_engine();
  serving_engine(const serving_engine&) = delete;
  serving_engine& operator=(const serving_engine&) = delete;

  /// Queues a request (checked as batch_decoder::add checks it, when it joins the batch: a bad
  /// request fails its future). Throws queue_full past the queue's bound.
  std::future<generation_result> submit(const generation_request& request,
                                        token_callback on_token = {}, ticket* id = nullptr,
                                        done_callback on_done = {});
  /// Ends a request (its client went away): queued, it never runs; decoding, its blocks go back
  /// at the next step boundary. Its future fails with troupe::error("cancelled").
  void cancel(ticket id);

  std::int64_t queued() const;
  std::int64_t decoding() const;

 private:
  using clock = std::chrono::steady_clock;
  struct pending {
    ticket id;
    generation_request request;
    token_callback on_token;
    done_callback on_done;
    std::promise<generation_result> result;
    clock::time_point submitted{}, first_token{};
    std::int64_t tokens = 0;
    void succeed(generation_result r);
    void fail(const std::string& why);
  };
  void run();
  /// Reports a request's new tokens: its callback, and the latency metrics.
  void deliver(pending& p, const std::vector<std::int32_t>& tokens);
  void report_state(std::int64_t running);

  cached_model* model_;
  latent_cache* cache_;
  const exec_context* context_;
  serving_options options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<pending> queue_;
  std::vector<ticket> cancelled_;
  std::int64_t decoding_ = 0;
  ticket next_ = 1;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace troupe
