#pragma once

// A serving model's routed experts on expert shards of its own process, with DeepSeek's
// redundant experts: each MoE layer has experts + R physical slots over S shards, the heaviest
// experts hold several, and a token's rows for a replicated expert split between its copies
// (sharded_experts with replicas). Every `interval` the placement is recomputed by EPLB from the
// load the model routed since the last one (expert_placement.hpp) and the shards that change are
// rebuilt with their new experts, copied from the shards that hold them, between two decode steps:
// no sequence is dropped or changes its tokens (an expert computes the same rows wherever it is).
//
// The serving engine's thread calls everything here (after_step between steps), so nothing
// locks. Parameters stay on the host (expert shards compute on the CPU).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/experts/expert_shard.hpp"
#include "runtime/experts/expert_transport.hpp"
#include "runtime/experts/sharded_experts.hpp"
#include "runtime/placement/expert_placement.hpp"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace troupe {

struct replicated_experts_options {
  std::int64_t shards = 2;
  std::int64_t redundant = 0;  ///< physical slots beyond one per expert, per layer
  /// Seconds between re-placements (0: never; DeepSeek re-places every ten minutes).
  double interval = 600.0;
  prometheus::Registry* metrics = nullptr;  ///< rebalance and placement series (may be null)
  std::string engine = "serve";             ///< their `engine` label (one per serving instance)
};

/// What one re-placement did.
struct replacement_report {
  bool changed = false;
  std::int64_t copied = 0;  ///< (layer, expert) copies a shard did not hold before
  std::int64_t bytes = 0;   ///< their weights
  double seconds = 0.0;
};

class replicated_experts {
 public:
  /// Loads a shard's parameters (from the checkpoint) once its experts are known.
  using loader = std::function<void(parameter_store&)>;

  /// Places experts + redundant slots of every MoE layer on `options.shards` shards (EPLB on equal
  /// loads: the first experts get the extra replicas until load is seen) and loads them. Throws
  /// troupe::error when the slots do not split evenly over the shards or a layer has fewer
  /// experts than shards.
  replicated_experts(const model_config& config, std::shared_ptr<const plugin_library> moe,
                     std::string moe_options, replicated_experts_options options, loader load,
                     const exec_context& context);
  ~replicated_experts();
  replicated_experts(const replicated_experts&) = delete;
  replicated_experts& operator=(const replicated_experts&) = delete;

  /// The model's expert backend (model_plugins::experts).
  expert_backend& backend() { return *backend_; }
  const expert_placement& placement() const { return placement_; }
  /// Re-placements that changed the placement so far.
  std::int64_t replacements() const { return replacements_; }

  /// Between steps: counts the step's load (layer -> tokens per expert) and re-places when the
  /// interval has passed since the last re-placement.
  void after_step(const layer_expert_load& load);
  /// Re-places now for `load` (nothing changes where it would not lower any layer's imbalance).
  replacement_report rebalance(const layer_expert_load& load);
  /// Re-places now for the load seen since the last re-placement (`troupe ctl SERVER rebalance`);
  /// the interval starts again.
  replacement_report rebalance_observed();
  /// A moe plugin swap's first half: every shard rebuilt on `library` with the weights it holds;
  /// nothing changes yet. Throws (the plugin's cause) when a shard cannot be built.
  std::vector<std::unique_ptr<expert_shard>> shards_on(
      const std::shared_ptr<const plugin_library>& library) const;
  /// The second half: shards_on's shards take over (the routing stays).
  void adopt(std::vector<std::unique_ptr<expert_shard>> shards,
             std::shared_ptr<const plugin_library> library);
  /// The load seen since the last re-placement.
  const layer_expert_load& observed() const { return observed_; }

 private:
  struct metric_families;
  void publish_placement();

  model_config config_;
  std::shared_ptr<const plugin_library> moe_;
  std::string moe_options_;
  replicated_experts_options options_;
  const exec_context& context_;
  std::vector<std::unique_ptr<expert_shard>> shards_;
  std::unique_ptr<local_expert_transport> transport_;
  std::unique_ptr<sharded_experts> backend_;
  expert_placement placement_;
  layer_expert_load observed_;
  std::chrono::steady_clock::time_point last_;
  std::int64_t replacements_ = 0;
  std::unique_ptr<metric_families> metrics_;
};

}  // namespace troupe
