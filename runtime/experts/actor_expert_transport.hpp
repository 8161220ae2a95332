#pragma once

// The expert transport of a job's pipeline stages: requests go to the expert-shard actors as
// messages, all of them before the first reply is awaited, so the shards compute at the same
// time. The calling thread blocks until every reply is in: stages run on threads of their own.
// A serving instance's shards in other processes (remote_shard_set.hpp) are reached the same
// way, from whichever thread steps the instance.

#include <memory>
#include <optional>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/experts/expert_transport.hpp"

namespace troupe {

class actor_expert_transport : public expert_transport {
 public:
  /// `actor_per_exchange`: a blocking actor made for each exchange in the calling thread (any
  /// thread may exchange, and close() is not needed); otherwise one, made on first use, that only
  /// that thread may use.
  explicit actor_expert_transport(actor_runtime& runtime, bool actor_per_exchange = false);
  ~actor_expert_transport() override;

  /// The shard actors, in shard order (set once they are spawned, before the first exchange).
  void set_shards(std::vector<actor_ref> shards) { shards_ = std::move(shards); }
  /// Drops the blocking actor this transport talks through; call in the thread that used it,
  /// before the actor runtime stops.
  void close();

  std::vector<expert_reply> exchange(
      const std::vector<std::optional<expert_request>>& requests) override;

 private:
  actor_runtime& runtime_;
  std::vector<actor_ref> shards_;
  bool actor_per_exchange_;
  // Made on first use, in the thread of the actor that uses it.
  std::unique_ptr<scoped_actor> self_;
};

}  // namespace troupe
