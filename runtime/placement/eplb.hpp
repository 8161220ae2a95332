#pragma once

// DeepSeek's expert-parallel load balancer (EPLB, github.com/deepseek-ai/EPLB): from each MoE
// layer's per-expert load, how many replicas each logical expert gets (the heaviest get more)
// and on which device each replica sits, so that devices carry balanced loads.
//
// Hierarchical policy (when the nodes divide the expert groups, DeepSeek-V3's group-limited
// routing keeps a token's experts on few nodes): expert groups are packed to nodes with balanced
// loads, the experts are replicated within each node, and the replicas are packed to the node's
// devices. Otherwise the global policy replicates over all devices ignoring groups. Packing is
// greedy: items by falling load, each to the lightest pack with room (the first of equal ones);
// a replica goes to the expert with the highest load per replica (the first of equal ones).
// Loads are compared in float32, as the reference does, so equal loads break the same way.

#include <cstdint>
#include <span>
#include <vector>

namespace troupe {

struct eplb_shape {
  std::int64_t replicas = 0;  ///< physical experts per layer, a multiple of devices
  std::int64_t groups = 1;    ///< expert groups (n_group)
  std::int64_t nodes = 1;
  std::int64_t devices = 1;  ///< a multiple of nodes
};

/// One placement per layer, as DeepSeek's rebalance_experts returns it.
struct eplb_plan {
  std::int64_t layers = 0, logical = 0, physical = 0;
  std::int64_t max_replicas = 0;      ///< the most replicas of one expert
  bool hierarchical = false;          ///< which policy made it
  std::vector<std::int64_t> phy2log;  ///< [layers][physical]: the expert of each replica slot
  std::vector<std::int64_t> log2phy;  ///< [layers][logical][max_replicas]: slots, -1 past its count
  std::vector<std::int64_t> logcnt;   ///< [layers][logical]: replicas of each expert
  std::vector<std::int64_t> phy_rank;  ///< [layers][physical]: which replica of its expert

  /// The layer's per-device load when each expert's load is split evenly over its replicas
  /// (slot s on device s / (physical / devices)).
  std::vector<double> device_load(std::span<const float> load, std::int64_t layer,
                                  std::int64_t devices) const;
};

/// Places `layers` x `experts` loads (row-major, non-negative). Throws troupe::error naming the
/// parameter when the shape cannot be placed (replicas below the experts or not a multiple of
/// the devices, devices not a multiple of the nodes, experts not a multiple of the groups).
eplb_plan rebalance_experts(std::span<const float> load, std::int64_t layers, std::int64_t experts,
                            const eplb_shape& shape);

}  // namespace troupe
