#pragma once

// An expert shard as an actor (expert parallelism): it owns some routed experts of every MoE
// layer (expert_shard.hpp), computes the token rows the pipeline stages dispatch to them, and
// holds their gradients and optimizer state. It computes, so it runs on a thread of its own; its
// compute goes to the process's worker pool.
//
// Messages: expert_request -> expert_reply (expert_messages.hpp); the holder protocol
// (runtime/job/holder_messages.hpp): gradients_request -> gradient_report, optimizer_order ->
// bool, checkpoint_order -> checkpoint_written; the hot-swap messages (runtime/job/hot_swap.hpp);
// a rebalance's expert_handover_request -> expert_handover, expert_placement_order -> bool and
// expert_placement_commit -> bool (expert_messages.hpp). A serving shard (remote_shard_set.hpp)
// has no optimizer and answers only the requests, the hot swaps and the rebalances.

#include <memory>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/experts/expert_move.hpp"
#include "runtime/experts/expert_shard.hpp"
#include "runtime/job/process_plugins.hpp"
#include "runtime/optim/adamw.hpp"

namespace troupe {

struct shard_actor_setup {
  std::unique_ptr<expert_shard> shard;
  std::unique_ptr<adamw> optimizer;  ///< null: a serving shard
  const exec_context* context = nullptr;
  actor_ref ema;                             ///< may be empty
  std::shared_ptr<process_plugins> plugins;  ///< this process's side of hot swaps
  /// Builds the shard for another set of experts (rebalance); empty: this shard's experts stay.
  shard_factory rebuild;
  adamw_settings optimizer_settings;
  shard_successor pending;  ///< what a rebalance prepared, until its commit
};

actor_ref spawn_expert_shard_actor(actor_runtime& runtime,
                                   std::shared_ptr<shard_actor_setup> setup);

}  // namespace troupe
