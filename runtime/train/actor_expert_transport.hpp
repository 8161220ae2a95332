#pragma once

// The expert transport of the training job: requests go to the expert-shard actors as actor
// messages, all of them before the first reply is awaited, so the shards compute at the same
// time. The calling thread blocks until every reply is in: pipeline ranks are detached actors.

#include <memory>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "runtime/experts/expert_transport.hpp"

namespace caf {
class scoped_actor;
}

namespace troupe {

class actor_expert_transport : public expert_transport {
 public:
  explicit actor_expert_transport(caf::actor_system& system);
  ~actor_expert_transport() override;

  /// The shard actors, in shard order (set once they are spawned, before the first exchange).
  void set_shards(std::vector<caf::actor> shards) { shards_ = std::move(shards); }
  /// Drops the blocking actor this transport talks through; call in the thread that used it,
  /// before the actor system stops.
  void close();

  std::vector<expert_reply> exchange(
      const std::vector<std::optional<expert_request>>& requests) override;

 private:
  caf::actor_system& system_;
  std::vector<caf::actor> shards_;
  // Made on first use, in the thread of the actor that uses it.
  std::unique_ptr<caf::scoped_actor> self_;
};

}  // namespace troupe
