#include "runtime/metrics/rebalance_metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace troupe {

rebalance_metrics::rebalance_metrics(prometheus::Registry& r, prometheus::Labels labels)
    : labels_(std::move(labels)),
      rebalances_(prometheus::BuildCounter()
                      .Name("troupe_expert_rebalances_total")
                      .Help("Re-placements of the routed experts on the expert shards, by "
                            "outcome (moved, unchanged, failed)")
                      .Register(r)),
      moved_(prometheus::BuildCounter()
                 .Name("troupe_experts_moved_total")
                 .Help("Routed experts (or, serving, copies) re-placements put on another shard")
                 .Register(r)),
      bytes_(prometheus::BuildCounter()
                 .Name("troupe_expert_rebalance_bytes_total")
                 .Help("Bytes of expert weights (and, training, AdamW moments) re-placements "
                       "moved between shards")
                 .Register(r)),
      pause_(prometheus::BuildHistogram()
                 .Name("troupe_expert_rebalance_pause_seconds")
                 .Help("How long a re-placement held the step loop at a step boundary")
                 .Register(r)),
      imbalance_(prometheus::BuildGauge()
                     .Name("troupe_expert_shard_load_max_over_mean")
                     .Help("Largest expert shard's load over the mean of a MoE layer in the last "
                           "step")
                     .Register(r)) {}

prometheus::Labels rebalance_metrics::with(prometheus::Labels extra) const {
  extra.insert(labels_.begin(), labels_.end());
  return extra;
}

void rebalance_metrics::record(const std::string& outcome, std::int64_t moved, std::int64_t bytes,
                               double pause_seconds) {
  rebalances_.Add(with({{"outcome", outcome}})).Increment();
  moved_.Add(labels_).Increment(static_cast<double>(moved));
  bytes_.Add(labels_).Increment(static_cast<double>(bytes));
  if (outcome != "moved") return;  // only a move holds the step loop for long
  pause_
      .Add(labels_,
           prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5})
      .Observe(pause_seconds);
}

void rebalance_metrics::shard_imbalance(std::int64_t layer, double value) {
  imbalance_.Add(with({{"layer", std::to_string(layer)}})).Set(value);
}

}  // namespace troupe
