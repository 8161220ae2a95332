#pragma once

// Which expert shard computes each routed expert of each MoE layer, and a better one for an
// observed load. A job starts with the topology's [[expert_shards]] lists for every layer; a
// rebalance (`troupe ctl JOB rebalance`) re-places each layer's experts by DeepSeek's EPLB
// (eplb.hpp) with one replica per expert and the shards as its devices, so every shard keeps as
// many experts as before and the heavy ones spread out.
//
// NOTES: EPLB numbers its packs arbitrarily; the shards are matched to the packs greedily by the
// experts they already hold (the largest overlap first), so a layer that is already balanced
// moves nothing and a move carries only the experts that must change shard.

#include <cstdint>
#include <map>
#include <vector>

namespace troupe {

/// Tokens routed to each expert, per MoE layer (what a step's rank reports sum up).
using layer_expert_load = std::map<std::int64_t, std::vector<std::int64_t>>;

struct expert_placement {
  /// Per MoE layer, per shard: the experts it computes, ascending.
  std::map<std::int64_t, std::vector<std::vector<std::int64_t>>> layers;

  /// The same lists for every one of `moe_layers` (the topology's [[expert_shards]]).
  static expert_placement uniform(const std::vector<std::int64_t>& moe_layers,
                                  const std::vector<std::vector<std::int64_t>>& shard_experts);

  std::int64_t shards() const;
  /// Throws troupe::error naming the layer and expert unless every layer places each of
  /// `experts` on exactly one shard (with `replicas`: on one or more, never twice on one), with
  /// the same number of shards everywhere.
  void check(std::int64_t experts, bool replicas = false) const;
  /// The shard of each expert in `layer` (the last one, for a replicated expert).
  std::vector<std::int64_t> owners(std::int64_t layer, std::int64_t experts) const;
  /// Per layer, the experts shard `shard` computes.
  std::map<std::int64_t, std::vector<std::int64_t>> of_shard(std::int64_t shard) const;
  /// max over shards of a shard's load, over the mean (1: balanced; 0 without load); a
  /// replicated expert's load splits evenly between its shards.
  double imbalance(std::int64_t layer, const std::vector<std::int64_t>& load) const;

  bool operator==(const expert_placement&) const = default;
};

/// Every one of `moe_layers` placed by EPLB for equal loads: experts + `redundant` slots over
/// `shards` shards (the extra replicas go to the first experts). Throws troupe::error when the
/// slots do not split evenly over the shards.
expert_placement initial_placement(const std::vector<std::int64_t>& moe_layers,
                                   std::int64_t experts, std::int64_t shards, std::int64_t groups,
                                   std::int64_t redundant);

/// One expert changing shard.
struct expert_move {
  std::int64_t layer = 0, expert = 0, from = 0, to = 0;
};

/// The moves that turn `from` into `to` (the same layers and shards), layer by layer.
std::vector<expert_move> moves_between(const expert_placement& from, const expert_placement& to);

/// Each layer of `current` re-placed for `load` by EPLB (experts + `redundant` replicas, the
/// heaviest experts replicated; `groups` expert groups, one node, the shards as devices; a
/// shard given two replicas of one expert keeps one). A layer without load, or whose
/// re-placement would not lower its imbalance, stays as it is. Throws troupe::error when the
/// replicas are not a multiple of the shards (EPLB gives every shard the same number).
expert_placement balanced_placement(const expert_placement& current, const layer_expert_load& load,
                                    std::int64_t experts, std::int64_t groups,
                                    std::int64_t redundant = 0);

}  // namespace troupe
