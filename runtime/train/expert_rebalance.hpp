#pragma once

// Routed experts moving between the expert shards of a running training job (`troupe ctl JOB
// rebalance`, docs/control.md), at a step boundary: each MoE layer's experts re-placed for the
// load observed so far (expert_placement.hpp: DeepSeek's EPLB with the shards as its devices),
// each moved expert's weights and AdamW moments handed from its old shard to its new one
// (expert_messages.hpp), and the pipeline ranks told where each layer's experts are now. The
// losses go on as if nothing had moved (the experts compute the same rows; only the order in
// which the gradient norm adds the shards' parts changes).

#include <cstdint>
#include <map>
#include <string>

#include "runtime/actor/blocking_actor.hpp"
#include "runtime/placement/expert_placement.hpp"
#include "runtime/train/training_roles.hpp"

namespace troupe {

struct rebalance_report {
  std::int64_t moved = 0;  ///< experts that changed shard (over every layer)
  std::int64_t bytes = 0;  ///< their weights and moments, as sent
  double seconds = 0.0;    ///< the step loop's pause
};

/// Moves the experts of `roles` from roles.placement to `target` (the same layers and shards)
/// and makes `target` the job's placement. Everywhere or nowhere: when a shard cannot take its
/// new set, every prepared one is dropped and troupe::error goes on (the job keeps its
/// placement and runs on); a failure after the first commit throws std::runtime_error, which
/// fails the job (shards and stages may disagree).
rebalance_report move_experts(blocking_actor& self, training_roles& roles,
                              const expert_placement& target);

}  // namespace troupe
