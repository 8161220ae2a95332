#include "runtime/serve/serving_metrics.hpp"

#include <algorithm>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace troupe {

struct serving_metrics::families {
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Histogram& first_token;
  prometheus::Histogram& per_token;
  prometheus::Counter& prompt_tokens;
  prometheus::Gauge& waiting;
  prometheus::Gauge& running;
  prometheus::Gauge& blocks_used;
  prometheus::Gauge& blocks_free;
  prometheus::Family<prometheus::Counter>& expert_routed;
  prometheus::Family<prometheus::Counter>& layer_routed;
  prometheus::Family<prometheus::Gauge>& imbalance;
};

namespace {

prometheus::Histogram& histogram(prometheus::Registry& registry, const char* name, const char* help,
                                 prometheus::Histogram::BucketBoundaries b) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, b);
}

}  // namespace

serving_metrics::serving_metrics(prometheus::Registry& registry) {
  auto& blocks = prometheus::BuildGauge()
                     .Name("troupe_kv_cache_blocks")
                     .Help("Blocks of the paged latent cache, by state (used, free)")
                     .Register(registry);
  auto& sequences = prometheus::BuildGauge()
                        .Name("troupe_serve_sequences")
                        .Help("Requests waiting to join the batch and sequences decoding in it")
                        .Register(registry);
  families_ = std::make_unique<families>(families{
      prometheus::BuildCounter()
          .Name("troupe_serve_requests_total")
          .Help("Requests to the OpenAI-compatible endpoints, by endpoint and outcome")
          .Register(registry),
      histogram(registry, "troupe_serve_time_to_first_token_seconds",
                "From a request's arrival to its first generated token",
                {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      histogram(registry, "troupe_serve_time_per_output_token_seconds",
                "Mean time between a request's generated tokens after the first",
                {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}),
      prometheus::BuildCounter()
          .Name("troupe_serve_prompt_tokens_total")
          .Help("Prompt tokens of the requests that joined the batch")
          .Register(registry)
          .Add({}),
      sequences.Add({{"state", "waiting"}}),
      sequences.Add({{"state", "running"}}),
      blocks.Add({{"state", "used"}}),
      blocks.Add({{"state", "free"}}),
      prometheus::BuildCounter()
          .Name("troupe_expert_tokens_routed_total")
          .Help("Tokens the router sent to each routed expert, by MoE layer and expert")
          .Register(registry),
      prometheus::BuildCounter()
          .Name("troupe_layer_tokens_routed_total")
          .Help("Token-to-expert assignments of each MoE layer (tokens x experts per token)")
          .Register(registry),
      prometheus::BuildGauge()
          .Name("troupe_expert_load_max_over_mean")
          .Help("Largest expert load over the mean load of a MoE layer in the last step")
          .Register(registry),
  });
}

serving_metrics::~serving_metrics() = default;

void serving_metrics::request(std::string_view endpoint, std::string_view outcome) {
  families_->requests.Add({{"endpoint", std::string(endpoint)}, {"outcome", std::string(outcome)}})
      .Increment();
}

void serving_metrics::first_token(double seconds) {
  families_->first_token.Observe(seconds);
}

void serving_metrics::per_output_token(double seconds) {
  families_->per_token.Observe(seconds);
}

void serving_metrics::prompt_tokens(std::int64_t count) {
  families_->prompt_tokens.Increment(static_cast<double>(count));
}

void serving_metrics::state(std::int64_t waiting, std::int64_t running, std::int64_t blocks_used,
                            std::int64_t blocks_free) {
  families_->waiting.Set(static_cast<double>(waiting));
  families_->running.Set(static_cast<double>(running));
  families_->blocks_used.Set(static_cast<double>(blocks_used));
  families_->blocks_free.Set(static_cast<double>(blocks_free));
}

void serving_metrics::expert_load(const std::map<std::int64_t, std::vector<std::int64_t>>& load) {
  for (const auto& [layer, counts] : load) {
    const std::string l = std::to_string(layer);
    std::int64_t total = 0, most = 0;
    for (std::size_t e = 0; e < counts.size(); ++e) {
      total += counts[e];
      most = std::max(most, counts[e]);
      families_->expert_routed.Add({{"layer", l}, {"expert", std::to_string(e)}})
          .Increment(static_cast<double>(counts[e]));
    }
    families_->layer_routed.Add({{"layer", l}}).Increment(static_cast<double>(total));
    if (total > 0)
      families_->imbalance.Add({{"layer", l}})
          .Set(static_cast<double>(most) * static_cast<double>(counts.size()) /
               static_cast<double>(total));
  }
}

double serving_metrics::expert_tokens_total(std::int64_t layer, std::int64_t expert) const {
  return families_->expert_routed
      .Add({{"layer", std::to_string(layer)}, {"expert", std::to_string(expert)}})
      .Value();
}

double serving_metrics::requests_total(std::string_view endpoint, std::string_view outcome) const {
  return families_->requests
      .Add({{"endpoint", std::string(endpoint)}, {"outcome", std::string(outcome)}})
      .Value();
}

double serving_metrics::prompt_tokens_total() const {
  return families_->prompt_tokens.Value();
}

std::uint64_t serving_metrics::first_token_count() const {
  return families_->first_token.Collect().histogram.sample_count;
}

}  // namespace troupe
