#pragma once

// A request inside an engine: its callbacks, its promise, and the times the latency metrics need.
// Engines keep it from submit() to the moment its future is readied.

#include <chrono>
#include <cstdint>
#include <future>
#include <string>
#include <utility>
#include <vector>

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

}  // namespace troupe
