#pragma once

// A pipeline stage as an actor: one pipeline rank of one data-parallel replica (pipeline_rank.hpp:
// one stage, or two under DualPipe), running its ops of each step's schedule plan as their inputs
// arrive from the other ranks, routing its MoE layers' tokens to the expert shards, and holding
// its chunks' parameters, gradients and optimizer state. It computes and waits for the experts,
// so it runs on a thread of its own; its compute goes to the process's worker pool.
//
// Messages (stage_messages.hpp): stage_peers once; step_order -> rank_step_report when its ops
// are done; stage_transfer from its peers; process_lost; set_router_biases -> bool from the
// balancer; expert_routing_order -> bool after a rebalance (expert_messages.hpp); the holder
// protocol (runtime/job/holder_messages.hpp): gradients_request -> gradient_report,
// reduced_gradients -> bool, optimizer_order -> bool, checkpoint_order -> checkpoint_written,
// stop_request -> bool; under ZeRO-1 zero_peers once and zero_exchange from the other ranks
// while it answers gradients_request and optimizer_order; the hot-swap messages
// (runtime/job/hot_swap.hpp).

#include <memory>
#include <set>
#include <string>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/experts/actor_expert_transport.hpp"
#include "runtime/job/process_plugins.hpp"
#include "runtime/stage/pipeline_rank.hpp"

namespace troupe {

struct stage_actor_setup {
  std::unique_ptr<pipeline_rank> rank;
  std::unique_ptr<actor_expert_transport> transport;  ///< the rank's chunks' expert backends use it
  std::set<std::string> replicated;                   ///< parameters other ranks hold too
  std::set<std::string> owned;  ///< names this rank writes to checkpoints and EMA snapshots
  /// ZeRO-1 (train.zero = 1): the ranges of the replicated parameters this rank keeps and the
  /// pieces it exchanges with the other ranks; null without ZeRO.
  std::shared_ptr<const zero_sharding> zero;
  actor_ref ema;          ///< may be empty
  bool ema_wait = false;  ///< wait for a busy EMA instead of skipping snapshots
  /// A GPU rank's snapshot in flight: its buffers (router biases), copied when it started.
  std::vector<std::pair<std::string, tensor>> snapshot_buffers;
  std::int64_t snapshot_updates = 1;  ///< scheduled EMA updates the snapshot in flight stands for
  /// Scheduled snapshots a GPU rank skipped since its last one because the EMA actor was still
  /// busy with older ones: the next snapshot stands for them too (ema_snapshot::updates).
  std::int64_t snapshots_skipped = 0;
  std::shared_ptr<process_plugins> plugins;  ///< this process's side of hot swaps
};

actor_ref spawn_stage_actor(actor_runtime& runtime, std::shared_ptr<stage_actor_setup> setup);

}  // namespace troupe
