#pragma once

// A serving model's routed experts on expert shards, with DeepSeek's redundant experts: each MoE
// layer has experts + R physical slots over S shards, the heaviest experts hold several, and a
// token's rows for a replicated expert split between its copies (sharded_experts with replicas).
// Every `interval` the placement is recomputed by EPLB from the load the model routed since the
// last one (expert_placement.hpp) and the shards that change take their new experts, copied from
// the shards that hold them, between two decode steps: no sequence is dropped or changes its
// tokens (an expert computes the same rows wherever it is). The shards are objects of this process
// (local_shard_set.hpp) or actors of other processes (remote_shard_set.hpp).
//
// The serving engine's thread calls everything here (after_step between steps), or a control
// command while the engine's steps are held, so nothing locks. Expert shards compute on the CPU.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/experts/expert_shard_set.hpp"
#include "runtime/experts/local_shard_set.hpp"
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

/// The placement a serving instance starts with (EPLB on equal loads: the first experts get the
/// extra replicas until load is seen); the same wherever it is computed, so processes that hold
/// an instance's shards build them without asking. Throws troupe::error when the model has no
/// routed experts, the slots do not split evenly over the shards or a shard would be empty.
expert_placement serving_placement(const model_config& config,
                                   const replicated_experts_options& options);

class replicated_experts {
 public:
  using loader = local_shard_set::loader;
  /// Builds the shards of a placement (where they live is the factory's business).
  using shard_set_factory =
      std::function<std::unique_ptr<expert_shard_set>(const expert_placement& initial)>;

  /// Places experts + redundant slots of every MoE layer on `options.shards` shards of this
  /// process (serving_placement) and loads them. Throws troupe::error as serving_placement.
  replicated_experts(const model_config& config, std::shared_ptr<const plugin_library> moe,
                     std::string moe_options, replicated_experts_options options, loader load,
                     const exec_context& context);
  /// The same, with the shards `make` builds for the initial placement.
  replicated_experts(const model_config& config, replicated_experts_options options,
                     const shard_set_factory& make);
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
  /// Throws while a moe swap is prepared (its successors fit the shards as they are).
  replacement_report rebalance(const layer_expert_load& load);
  /// Re-places now for the load seen since the last re-placement (`troupe ctl SERVER rebalance`);
  /// the interval starts again.
  replacement_report rebalance_observed();
  /// A moe plugin swap's first half: every shard rebuilt on `library` (loaded from `path`) with
  /// the weights it holds; nothing changes yet. Returns the shards prepared; throws (the plugin's
  /// cause) when a shard cannot be built.
  std::int64_t prepare_swap(const std::shared_ptr<const plugin_library>& library,
                            const std::string& path);
  /// The second half: prepare_swap's shards take over (the routing stays).
  void commit_swap();
  void abort_swap();
  /// The load seen since the last re-placement.
  const layer_expert_load& observed() const { return observed_; }

 private:
  struct metric_families;
  void publish_placement();

  model_config config_;
  replicated_experts_options options_;
  std::unique_ptr<expert_shard_set> shards_;
  std::unique_ptr<sharded_experts> backend_;
  expert_placement placement_;
  layer_expert_load observed_;
  std::chrono::steady_clock::time_point last_;
  std::int64_t replacements_ = 0;
  /// prepare_swap until commit_swap or abort_swap (which may come from another thread while the
  /// steps run): nothing moves.
  std::atomic<bool> swap_pending_{false};
  std::unique_ptr<metric_families> metrics_;
};

}  // namespace troupe
