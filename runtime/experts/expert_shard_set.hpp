#pragma once

// Where a serving instance's expert shards are (replicated_experts.hpp): shard objects in the
// instance's process (local_shard_set.hpp) or shard actors in other processes
// (remote_shard_set.hpp). Either way the instance's rows reach them through an expert transport,
// a re-placement moves experts between them everywhere or nowhere, and a moe plugin swap rebuilds
// them in two halves. Called between steps only: by the engine's thread, or by a control command
// while the engine's steps are held.

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/experts/expert_transport.hpp"
#include "runtime/placement/expert_placement.hpp"

namespace troupe {

struct plugin_library;

/// What one re-placement did.
struct replacement_report {
  bool changed = false;
  std::int64_t copied = 0;  ///< (layer, expert) copies a shard did not hold before
  std::int64_t bytes = 0;   ///< their weights
  double seconds = 0.0;
};

class expert_shard_set {
 public:
  virtual ~expert_shard_set() = default;

  /// How the instance's rows reach the shards.
  virtual expert_transport& transport() = 0;

  /// Gives every shard s whose experts change the experts `target.of_shard(s)`, their weights
  /// copied from the shards that hold them now, and adds what was copied to `report`. Everywhere
  /// or nowhere: throws troupe::error, with nothing changed, when a shard cannot take its set.
  virtual void move_to(const expert_placement& target, replacement_report& report) = 0;

  /// A moe plugin swap's first half: every shard builds its successor on `library` (loaded from
  /// `path`; shards in other processes load that file themselves) with the weights it holds.
  /// Nothing changes yet. Returns the shards prepared; throws the plugin's cause.
  virtual std::int64_t prepare_swap(const std::shared_ptr<const plugin_library>& library,
                                    const std::string& path) = 0;
  /// The second half: the successors take over (the routing stays).
  virtual void commit_swap() = 0;
  /// Drops what prepare_swap built.
  virtual void abort_swap() = 0;
};

}  // namespace troupe
