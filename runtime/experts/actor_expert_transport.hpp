#pragma once

// The expert transport of a job's pipeline stages: requests go to the expert-shard actors as
// messages, all of them before the first reply is awaited, so the shards compute at the same
// time. The calling thread blocks until every reply is in: stages run on threads of their own.

#include <memory>
#include <optional>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/experts/expert_transport.hpp"

namespace troupe {

class actor_expert_transport : public expert_transport {
 public:
  explicit actor_expert_transport(actor_runtime& runtime);
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
  // Made on first use, in the thread of the actor that uses it.
  std::unique_ptr<scoped_actor> self_;
};

}  // namespace troupe
