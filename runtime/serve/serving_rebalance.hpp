#pragma once

// An expert re-placement of one process's serving instances (`troupe ctl SERVER rebalance`):
// while the instances' steps are held (request_engine::hold_steps) each instance's expert shards
// are re-placed, for a given load or for the load each observed since its last re-placement
// (replicated_experts.hpp). serving_control runs it in the serving process and asks each decode
// process to run its own (remote_decode.hpp's decode_rebalance).

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/placement/expert_placement.hpp"
#include "runtime/serve/request_engine.hpp"
#include "runtime/serve/serving_swap.hpp"

namespace troupe {

/// What a re-placement of a process's instances did.
struct rebalance_outcome {
  /// Per instance (by engine name): outcome ("moved" or "unchanged"), moved (expert copies),
  /// bytes, seconds and the shards' experts per MoE layer.
  nlohmann::json instances = nlohmann::json::object();
  std::int64_t moved = 0;
  std::int64_t bytes = 0;
  double pause_seconds = 0.0;  ///< how long the steps were held
};

class serving_rebalance {
 public:
  /// `instances`: those with expert shards (the others are skipped).
  serving_rebalance(request_engine& engine, std::vector<controlled_instance> instances);

  /// Whether any instance has expert shards.
  bool has_shards() const;
  /// The MoE layers the shards place (the decoder's and the MTP modules').
  std::vector<std::int64_t> layers() const;

  /// Re-places every instance's shards: for `load`, or (null) for what each observed. Throws
  /// engine_stopping when the server stops first, troupe::error naming the instances re-placed
  /// before a failure (each instance's re-placement is all-or-nothing, not the whole).
  rebalance_outcome run(const layer_expert_load* load);

 private:
  request_engine& engine_;
  std::vector<controlled_instance> instances_;
};

}  // namespace troupe
