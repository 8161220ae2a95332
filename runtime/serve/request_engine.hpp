#pragma once

// What a server hands its requests to: serving_engine (prefill and decode in one batch) or
// disaggregated_engine (prefill instances apart from decode instances). Both are thread-safe,
// stream each request's tokens to its callback and its result to its future, and refuse a
// request past their queue's bound at once.

#include <cstdint>
#include <functional>
#include <future>

#include "runtime/core/error.hpp"
#include "runtime/inference/generation.hpp"

namespace troupe {

/// The queue is full: the request was not taken.
class queue_full : public error {
 public:
  using error::error;
};

class request_engine {
 public:
  using ticket = std::uint64_t;
  /// Called on an engine thread with each new token of a request.
  using token_callback = std::function<void(std::int32_t)>;
  /// Called once a request's future is ready (its result or its error), on the thread that
  /// readied it; must not block.
  using done_callback = std::function<void()>;

  virtual ~request_engine() = default;

  /// Queues a request (checked when it joins a batch: a bad request fails its future). Throws
  /// queue_full past the queue's bound.
  virtual std::future<generation_result> submit(const generation_request& request,
                                                token_callback on_token = {}, ticket* id = nullptr,
                                                done_callback on_done = {}) = 0;
  /// Ends a request (its client went away): queued, it never runs; running, its blocks go back
  /// at the next step boundary. Its future fails with troupe::error("cancelled").
  virtual void cancel(ticket id) = 0;

  /// Requests waiting (for a batch, or between prefill and decode).
  virtual std::int64_t queued() const = 0;
  /// Sequences in a batch.
  virtual std::int64_t decoding() const = 0;

  /// Runs `work` on the calling thread while every thread of this engine that steps a model waits
  /// between two of its steps (an idle one at once): where a control command changes the models
  /// (step_hold.hpp). Returns the seconds the steps were held; throws troupe::error when the
  /// engine stops first, and what `work` throws.
  virtual double hold_steps(const std::function<void()>& work) = 0;
};

}  // namespace troupe
