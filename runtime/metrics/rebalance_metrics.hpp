#pragma once

// The series of re-placements of routed experts on expert shards, one definition for training
// (`troupe ctl JOB rebalance`) and serving (a re-placement every [serve] rebalance_interval):
// re-placements by outcome, experts moved, bytes moved, the pause they held the step loop for,
// and the busiest shard's load over the mean per MoE layer (monitoring/METRICS.md).

#include <cstdint>
#include <string>

#include <prometheus/labels.h>

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Gauge;
class Histogram;
}  // namespace prometheus

namespace troupe {

class rebalance_metrics {
 public:
  /// `labels`: what every series carries besides its own (serving: {"engine": its name}).
  explicit rebalance_metrics(prometheus::Registry& registry, prometheus::Labels labels = {});

  /// One re-placement: `outcome` is "moved", "unchanged" or "failed"; `moved` experts (or
  /// copies) and `bytes` went to other shards while the step loop paused `pause_seconds` (in
  /// the pause histogram for moves only).
  void record(const std::string& outcome, std::int64_t moved, std::int64_t bytes,
              double pause_seconds);
  /// The busiest shard's load over the mean shard load of `layer` in the last step.
  void shard_imbalance(std::int64_t layer, double value);

 private:
  prometheus::Labels with(prometheus::Labels extra) const;

  prometheus::Labels labels_;
  prometheus::Family<prometheus::Counter>& rebalances_;
  prometheus::Family<prometheus::Counter>& moved_;
  prometheus::Family<prometheus::Counter>& bytes_;
  prometheus::Family<prometheus::Histogram>& pause_;
  prometheus::Family<prometheus::Gauge>& imbalance_;
};

}  // namespace troupe
