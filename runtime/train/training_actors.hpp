#pragma once

// The actors of a training job and what each needs to start. Every one wraps a plain class that
// does the work (pipeline_rank, expert_shard, bias_balancer, ema_tracker, token_stream); the
// actors only move messages. Pipeline ranks, expert shards and the EMA updater compute or
// block, so they run detached, each on a thread of its own; their compute goes to the shared
// worker pool (callers wait while workers run, so the cores are never oversubscribed). The data
// loader and the balancer are light and run on CAF's scheduler.

#include <memory>
#include <set>
#include <string>
#include <vector>

#include <caf/actor.hpp>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/data/token_stream.hpp"
#include "runtime/experts/expert_shard.hpp"
#include "runtime/optim/adamw.hpp"
#include "runtime/train/bias_balancer.hpp"
#include "runtime/train/ema_tracker.hpp"
#include "runtime/train/pipeline_rank.hpp"
#include "runtime/train/process_plugins.hpp"

namespace troupe {

class actor_expert_transport;

struct stage_actor_setup {
  std::unique_ptr<pipeline_rank> rank;
  std::unique_ptr<actor_expert_transport> transport;  ///< the rank's chunks' expert backends use it
  std::set<std::string> replicated;                   ///< parameters other ranks hold too
  std::set<std::string> owned;  ///< names this rank writes to checkpoints and EMA snapshots
  caf::actor ema;               ///< may be null
  std::shared_ptr<process_plugins> plugins;  ///< this process's side of hot swaps
};

/// A pipeline rank. Messages: (peers, vector<actor>) once; (run_step, step_order) ->
/// rank_step_report when its ops are done; (transfer, stage_transfer) from peers;
/// (gradients) -> gradient_report;
/// (optimize, optimizer_order); (biases, router_biases); (save, checkpoint_order) ->
/// checkpoint_written.
caf::actor spawn_stage_actor(actor_runtime& runtime, std::shared_ptr<stage_actor_setup> setup);

struct shard_actor_setup {
  std::unique_ptr<expert_shard> shard;
  std::unique_ptr<adamw> optimizer;
  const exec_context* context = nullptr;
  caf::actor ema;
  std::shared_ptr<process_plugins> plugins;  ///< this process's side of hot swaps
};

/// An expert shard. Messages: expert_request -> expert_reply; (gradients) -> gradient_report;
/// (optimize, optimizer_order); (save, checkpoint_order) -> checkpoint_written.
caf::actor spawn_expert_shard_actor(actor_runtime& runtime,
                                    std::shared_ptr<shard_actor_setup> setup);

/// The bias balancer. Messages: (balance, load_report, vector<actor> holders) -> router_biases
/// after every holder has the new biases; (biases) -> router_biases.
caf::actor spawn_balancer_actor(actor_runtime& runtime, std::shared_ptr<bias_balancer> balancer);

struct ema_actor_setup {
  std::unique_ptr<ema_tracker> tracker;
  model_config config;
};

/// The EMA updater, on a low-priority thread. Messages: (snapshot, ema_snapshot) (no reply);
/// (save, string directory) -> writes the averages as a Hugging Face directory.
caf::actor spawn_ema_actor(actor_runtime& runtime, std::shared_ptr<ema_actor_setup> setup);

struct data_actor_setup {
  std::unique_ptr<text_corpus> corpus;
  std::unique_ptr<byte_tokenizer> tokenizer;
  std::unique_ptr<token_stream> stream;
  std::int64_t micro_batch_size = 1;
  std::int64_t sequence_length = 2;
};

/// The data loader. Messages: (batch, int64 micro_batches) -> data_batch.
caf::actor spawn_data_actor(actor_runtime& runtime, std::shared_ptr<data_actor_setup> setup);

}  // namespace troupe
