#pragma once

// The expert backend of a stage whose routed experts live on expert shards: it splits the rows
// grouped by expert into each shard's part, sends them in the wire precision (FP8 dispatch and
// BF16 combine when training in FP8), and puts the replies back in row order.

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "runtime/experts/expert_transport.hpp"
#include "runtime/model/expert_backend.hpp"

namespace troupe {

class sharded_experts : public expert_backend {
 public:
  struct options {
    wire_precision dispatch = wire_precision::f32;  ///< rows to the shards
    wire_precision combine = wire_precision::f32;   ///< outputs back, and gradients both ways
    std::int32_t source = 0;                        ///< which copy of the stage this is
    /// Serving: an expert may be on several shards (redundant experts); its rows are split
    /// between them. Training needs each expert on one shard (its gradients).
    bool replicas = false;
    /// Each shard's host (a dense index) and the stage's own: tokens whose experts lie on other
    /// hosts are counted (routing_counts). Empty: not counted.
    std::vector<std::int32_t> shard_host = {};
    std::int32_t own_host = -1;
  };

  /// Where the tokens' experts were since the last take: (token, other host) pairs, and the
  /// most hosts one token's experts lay on.
  struct routing_counts {
    std::int64_t tokens_across_hosts = 0;
    std::int64_t most_hosts_per_token = 0;
  };
  routing_counts take_routing_counts() { return std::exchange(routing_, routing_counts{}); }

  /// shard_experts[s]: the experts shard s owns (ascending) in every layer; together every
  /// routed expert once (or more, with options::replicas).
  sharded_experts(std::vector<std::vector<std::int64_t>> shard_experts, std::int64_t experts,
                  expert_transport& transport, options settings);

  /// Per layer, the experts each shard owns from now on (a rebalance moved some); layers not
  /// listed keep theirs. Only between steps: throws while a micro-batch is with the shards, or
  /// when a layer does not place every expert on exactly one of the shards.
  void set_placement(const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& layers);
  /// Throws as set_placement would, and changes nothing.
  void check_placement(
      const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& layers) const;

  tensor forward(std::int64_t layer, std::int64_t micro_batch, const tensor& rows,
                 std::span<const std::int64_t> counts) override;
  tensor backward_input(std::int64_t layer, std::int64_t micro_batch,
                        const tensor& dy_rows) override;
  void backward_weight(std::int64_t layer, std::int64_t micro_batch) override;
  void forget(std::int64_t layer, std::int64_t micro_batch) override;
  void abandon(std::int64_t layer, std::int64_t micro_batch) override;
  void observe_routing(std::int64_t layer, const std::int32_t* selected, std::int64_t tokens,
                       std::int64_t k) override;

  /// Bytes sent to and received from the shards so far (payload only).
  std::int64_t bytes_sent() const { return bytes_sent_; }
  std::int64_t bytes_received() const { return bytes_received_; }

 private:
  /// Each shard's row ranges [first, end) in the grouped rows, in its experts' order.
  using shard_ranges = std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>>;
  shard_ranges ranges_of(std::int64_t layer, std::span<const std::int64_t> counts) const;
  /// The shards' experts in `layer`.
  const std::vector<std::vector<std::int64_t>>& lists_for(std::int64_t layer) const;
  /// Sends each shard its part of `rows` and assembles the replies into one [R, H] tensor.
  tensor exchange_rows(expert_request::kind what, std::int64_t layer, std::int64_t micro_batch,
                       const tensor& rows, const shard_ranges& ranges, wire_precision out);
  void notify_all(expert_request::kind what, std::int64_t layer, std::int64_t micro_batch);

  std::vector<std::vector<std::int64_t>> shard_experts_;  // every layer not in by_layer_
  std::map<std::int64_t, std::vector<std::vector<std::int64_t>>> by_layer_;
  std::int64_t experts_;
  expert_transport& transport_;
  options settings_;
  std::map<std::pair<std::int64_t, std::int64_t>, shard_ranges> in_flight_;
  std::int64_t bytes_sent_ = 0, bytes_received_ = 0;
  routing_counts routing_;
};

}  // namespace troupe
