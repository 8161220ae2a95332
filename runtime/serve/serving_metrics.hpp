#pragma once

// What a server reports to Prometheus (monitoring/METRICS.md, "Serving"): requests by endpoint
// and outcome, time to first token and time per output token, the queue and the batch, the KV
// cache's blocks and the prompt tokens read. The tokens generated and the speculative drafts are
// counted by the batch decoder (metrics_registry). Thread-safe.

#include <cstdint>
#include <map>
#include <memory>
#include <string_view>
#include <vector>

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

  /// Tokens each MoE layer routed to each expert in a step (layer -> [experts]): the same
  /// series as training's (troupe_expert_tokens_routed_total, troupe_layer_tokens_routed_total,
  /// troupe_expert_load_max_over_mean), so the dashboard's expert panels and `troupe eplb` read
  /// a server's load as they read a training job's.
  void expert_load(const std::map<std::int64_t, std::vector<std::int64_t>>& load);

  /// Current values, for tests.
  double requests_total(std::string_view endpoint, std::string_view outcome) const;
  double prompt_tokens_total() const;
  std::uint64_t first_token_count() const;
  double expert_tokens_total(std::int64_t layer, std::int64_t expert) const;

 private:
  struct families;
  std::unique_ptr<families> families_;
};

}  // namespace troupe
