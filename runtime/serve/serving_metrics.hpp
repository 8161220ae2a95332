#pragma once

// What a server reports to Prometheus (monitoring/METRICS.md, "Serving"): requests by endpoint
// and outcome, time to first token and time per output token, the queue and the batch, the KV
// cache's blocks and the prompt tokens read. The tokens generated and the speculative drafts are
// counted by the batch decoder (metrics_registry). Thread-safe.

#include <cstdint>
#include <memory>
#include <string_view>

namespace prometheus {
class Registry;
}

namespace troupe {

class serving_metrics {
 public:
  /// Registers the serving families in `registry`.
  explicit serving_metrics(prometheus::Registry& registry);
  ~serving_metrics();
  serving_metrics(const serving_metrics&) = delete;
  serving_metrics& operator=(const serving_metrics&) = delete;

  /// A request ended: `endpoint` "completions" or "chat_completions"; `outcome` "ok",
  /// "invalid" (4xx), "rejected" (429, the queue was full), "unavailable" (503, draining),
  /// "cancelled" (the client went away) or "failed".
  void request(std::string_view endpoint, std::string_view outcome);
  /// From a request's arrival to its first token.
  void first_token(double seconds);
  /// Between a request's later tokens: (last - first) / (tokens - 1).
  void per_output_token(double seconds);
  /// Prompt tokens that joined the batch.
  void prompt_tokens(std::int64_t count);
  /// The engine's state after a step: requests waiting, sequences decoding, cache blocks.
  void state(std::int64_t waiting, std::int64_t running, std::int64_t blocks_used,
             std::int64_t blocks_free);

  /// Current values, for tests.
  double requests_total(std::string_view endpoint, std::string_view outcome) const;
  double prompt_tokens_total() const;
  std::uint64_t first_token_count() const;

 private:
  struct families;
  std::unique_ptr<families> families_;
};

}  // namespace troupe
