#pragma once

// A serving instance's expert shards as actors of other processes ([serve] expert_hosts): each
// MoE layer's rows go to them as messages (actor_expert_transport), and a re-placement moves
// experts between them in the rebalance protocol of expert_messages.hpp, driven from here:
//   the shards that give experts up: expert_handover_request -> expert_handover (weights only)
//   every shard whose experts change: expert_placement_order (its new set built aside)
//   the same shards: expert_placement_commit (commit everywhere, or abort everywhere)
// A moe swap reaches them through the hot-swap messages (runtime/job/hot_swap.hpp); each process
// loads the library itself. The shard actors are spawn_expert_shard_actor's without an optimizer,
// built by serve_expert_shards in their processes for the same serving_placement.
//
// NOTES: the handed-over weights travel through this process (the instance's), not from shard
// to shard: a re-placement moves few experts, and one coordinator keeps it all-or-nothing up to
// the commit. A commit that reaches only some shards (a process lost between the two halves)
// leaves no routing that fits them all: the instance then fails every step, naming why.

#include <memory>
#include <string>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/experts/actor_expert_transport.hpp"
#include "runtime/experts/expert_shard_set.hpp"

namespace troupe {

class remote_shard_set : public expert_shard_set {
 public:
  /// `shards[s]`: the actor of shard s, which holds `initial.of_shard(s)`; `names[s]` how
  /// failures name it ("expert shard 3 (rank 2, node1)").
  remote_shard_set(actor_runtime& runtime, std::vector<actor_ref> shards,
                   std::vector<std::string> names, const expert_placement& initial);
  ~remote_shard_set() override;

  expert_transport& transport() override { return checked_; }
  void move_to(const expert_placement& target, replacement_report& report) override;
  std::int64_t prepare_swap(const std::shared_ptr<const plugin_library>& library,
                            const std::string& path) override;
  void commit_swap() override;
  void abort_swap() override;

 private:
  /// The shards in `which`, named for ask_each.
  named_actors named(const std::vector<std::size_t>& which) const;
  std::vector<std::size_t> every() const;

  actor_runtime& runtime_;
  std::vector<actor_ref> shards_;
  std::vector<std::string> names_;
  expert_placement placement_;  ///< where the experts are now
  actor_expert_transport transport_;
  /// transport_, unless a re-placement's commit reached only some shards: then every exchange
  /// fails with why.
  struct checked_transport : expert_transport {
    explicit checked_transport(remote_shard_set& set) : owner(set) {}
    std::vector<expert_reply> exchange(
        const std::vector<std::optional<expert_request>>& requests) override;
    remote_shard_set& owner;
  } checked_;
  std::string broken_;
  bool swap_prepared_ = false;
};

}  // namespace troupe
