#pragma once

// A request inside an engine: its callbacks, its promise, and the times the latency metrics need.
// Engines keep it from submit() to the moment its future is readied.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "runtime/core/error.hpp"
#include "runtime/serve/request_engine.hpp"
#include "runtime/serve/serving_metrics.hpp"

namespace troupe {

struct pending_request {
  using clock = std::chrono::steady_clock;

  request_engine::ticket id = 0;
  generation_request request;
  request_engine::token_callback on_token;
  request_engine::done_callback on_done;
  std::promise<generation_result> result;
  clock::time_point submitted = clock::now(), first_token{};
  std::int64_t tokens = 0;

  /// New tokens: the callback, and the time to the first one.
  void deliver(const std::vector<std::int32_t>& fresh, serving_metrics* metrics) {
    if (fresh.empty()) return;
    const auto now = clock::now();
    if (tokens == 0) {
      first_token = now;
      if (metrics != nullptr)
        metrics->first_token(std::chrono::duration<double>(now - submitted).count());
    }
    tokens += static_cast<std::int64_t>(fresh.size());
    if (on_token)
      for (const std::int32_t token : fresh) on_token(token);
  }
  /// Its result: the future, the time per output token.
  void succeed(generation_result r, serving_metrics* metrics) {
    if (metrics != nullptr && tokens > 1)
      metrics->per_output_token(std::chrono::duration<double>(clock::now() - first_token).count() /
                                static_cast<double>(tokens - 1));
    result.set_value(std::move(r));
    if (on_done) on_done();
  }
  void fail(const std::string& why) {
    result.set_exception(std::make_exception_ptr(error(why)));
    if (on_done) on_done();
  }
};

/// The requests waiting to join a batch, in arrival order, bounded; each gets its ticket here.
/// Not thread-safe: the engine's mutex guards it.
class request_queue {
 public:
  explicit request_queue(std::int64_t bound) : bound_(bound) {}
  ~request_queue() {
    for (pending_request& p : items_) p.fail("the server stopped");
  }

  /// Queues a request under a new ticket (into *id when given). Throws queue_full past the
  /// bound, its message saying what the queue waits for.
  std::future<generation_result> push(const generation_request& request,
                                      request_engine::token_callback on_token,
                                      request_engine::ticket* id,
                                      request_engine::done_callback on_done,
                                      std::string_view waiting_for) {
    if (size() >= bound_)
      throw queue_full(
          fmt::format("the queue is full ({} requests wait {})", items_.size(), waiting_for));
    pending_request p = issue(request, std::move(on_token), id, std::move(on_done));
    auto future = p.result.get_future();
    items_.push_back(std::move(p));
    return future;
  }
  /// A request under a new ticket that does not wait here (a sequence another process read the
  /// prompt of goes straight to a decode instance).
  pending_request issue(const generation_request& request, request_engine::token_callback on_token,
                        request_engine::ticket* id, request_engine::done_callback on_done) {
    pending_request p;
    p.id = next_++;
    p.request = request;
    p.on_token = std::move(on_token);
    p.on_done = std::move(on_done);
    if (id != nullptr) *id = p.id;
    return p;
  }
  /// Takes ticket `id` out, if it is still waiting.
  std::optional<pending_request> remove(request_engine::ticket id) {
    const auto it = std::find_if(items_.begin(), items_.end(),
                                 [&](const pending_request& p) { return p.id == id; });
    if (it == items_.end()) return std::nullopt;
    std::optional<pending_request> out(std::move(*it));
    items_.erase(it);
    return out;
  }
  /// The oldest request waiting (the queue must not be empty).
  pending_request pop() {
    pending_request p = std::move(items_.front());
    items_.pop_front();
    return p;
  }
  /// Whether `id` was ever handed out.
  bool issued(request_engine::ticket id) const { return id < next_; }
  bool empty() const { return items_.empty(); }
  std::int64_t size() const { return static_cast<std::int64_t>(items_.size()); }

 private:
  std::deque<pending_request> items_;
  const std::int64_t bound_;
  request_engine::ticket next_ = 1;
};

}  // namespace troupe
