#pragma once

// The decode loop of a server: requests from any thread join a batch_decoder that one thread
// steps for as long as there is work (continuous batching), each request's tokens go to its
// callback as they come and its result to its future. The queue of requests not yet in the
// batch is bounded; a request past the bound is refused at once (`troupe serve` answers 429).
// A request that cannot fit the cache fails alone; the others go on.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/inference/batch_decoder.hpp"
#include "runtime/serve/pending_request.hpp"
#include "runtime/serve/request_engine.hpp"
#include "runtime/serve/serving_metrics.hpp"
#include "runtime/serve/step_hold.hpp"

namespace troupe {

struct serving_options {
  std::int64_t max_batch = 32;               ///< sequences decoded together
  std::int64_t max_queue = 256;              ///< requests waiting to join the batch
  std::int64_t prefill_chunk = 0;            ///< prompt tokens a sequence reads per step (0: whole)
  metrics_registry* metrics = nullptr;       ///< tokens generated, speculative drafts
  serving_metrics* serve_metrics = nullptr;  ///< latency, queue, batch, cache
  /// Called on the engine's thread between two steps with the step's expert load (layer ->
  /// tokens per expert): where the model's expert shards re-place their experts. It must not throw;
  /// may be empty.
  std::function<void(const std::map<std::int64_t, std::vector<std::int64_t>>&)> after_step;
};

class serving_engine final : public request_engine {
 public:
  serving_engine(cached_model& model, latent_cache& cache, const exec_context& context,
                 serving_options options = {});
  /// Stops the thread; requests still queued or decoding fail with troupe::error.
  ~serving_engine() override;
  serving_engine(const serving_engine&) = delete;
  serving_engine& operator=(const serving_engine&) = delete;

  std::future<generation_result> submit(const generation_request& request,
                                        token_callback on_token = {}, ticket* id = nullptr,
                                        done_callback on_done = {}) override;
  void cancel(ticket id) override;
  std::int64_t queued() const override;
  std::int64_t decoding() const override;
  double hold_steps(const std::function<void()>& work) override;

 private:
  void run();
  void report_state(std::int64_t running);

  cached_model* model_;
  latent_cache* cache_;
  const exec_context* context_;
  serving_options options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  request_queue queue_;
  std::vector<ticket> cancelled_;
  std::int64_t decoding_ = 0;
  bool stopping_ = false;
  step_hold hold_{1};
  std::thread thread_;
};

}  // namespace troupe
