#pragma once

// The training job's Prometheus metrics, updated once per step (monitoring/METRICS.md lists
// each one). Expert series are per layer × expert by default; with per_expert_series off, only
// per-layer aggregates are exported (models with hundreds of experts).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/balancer/bias_balancer.hpp"
#include "runtime/placement/expert_placement.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/topology/topology.hpp"

namespace prometheus {
class Registry;
class Gauge;
}  // namespace prometheus

namespace troupe {

struct step_record;

class training_metrics {
 public:
  training_metrics(prometheus::Registry& registry, bool per_expert_series);
  ~training_metrics();

  void record_step(const step_record& record,
                   const std::map<std::int64_t, std::vector<float>>& router_biases);
  /// Busy and idle (bubble) seconds of one pipeline rank's step.
  void record_stage(const std::string& rank, double busy_seconds, double bubble_seconds);

  /// Whether an operator paused the step loop (troupe ctl JOB pause).
  void set_paused(bool paused);
  /// The plugin now serving `role`: name, version and generation (null: the runtime's built-in
  /// GEMM, plugin "builtin" of version `builtin`, "fp32" or "bf16").
  void set_plugin(plugin_kind role, const plugin_library* library, precision builtin);
  /// A hot swap of `role`'s plugin that succeeded or failed; a success paused the step loop for
  /// `pause_seconds`.
  void record_swap(plugin_kind role, bool swapped, double pause_seconds);
  /// Where the routed experts are computed (troupe_expert_shard per layer x expert, and the
  /// shards' load imbalance from the next step on).
  void set_placement(const expert_placement& placement);
  /// A rebalance that moved `moved` experts (`bytes` of weights and moments) or failed.
  void record_rebalance(bool done, std::int64_t moved, std::int64_t bytes, double pause_seconds);

 private:
  struct families;
  std::unique_ptr<families> families_;
  std::map<plugin_kind, prometheus::Gauge*> plugin_info_;
  bool per_expert_;
  expert_placement placement_;
};

}  // namespace troupe
