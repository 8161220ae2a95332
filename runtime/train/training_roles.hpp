#pragma once

// The actors of a training job and what each is built with:
//   data       the data loader (runtime/data/data_actor.hpp)
//   stageR     one pipeline rank per data-parallel replica ("stage0", or "stage0.r1")
//              (runtime/stage/stage_actor.hpp)
//   shardN     the expert shards (runtime/experts/expert_shard_actor.hpp)
//   balancer   the bias balancer (runtime/balancer/balancer_actor.hpp)
//   ema        the EMA updater (runtime/ema/ema_actor.hpp)
// and the coordinator (coordinator.hpp), which drives them. In a multi-process job each process
// builds and spawns the roles of its host; the others are proxies (job_process::place).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/balancer/bias_balancer.hpp"
#include "runtime/data/data_actor.hpp"
#include "runtime/ema/ema_actor.hpp"
#include "runtime/experts/expert_shard_actor.hpp"
#include "runtime/job/job_process.hpp"
#include "runtime/model/decoder_layer.hpp"
#include "runtime/optim/training_schedule.hpp"
#include "runtime/placement/expert_placement.hpp"
#include "runtime/stage/stage_actor.hpp"

namespace troupe {

struct training_roles {
  struct rank_entry {
    std::string name;
    std::int32_t replica = 0, rank = 0;
    actor_ref actor;
    std::shared_ptr<stage_actor_setup> setup;  ///< null when another process runs it
  };
  struct shard_entry {
    std::string name;
    actor_ref actor;
    std::shared_ptr<shard_actor_setup> setup;  ///< null when another process runs it
  };

  std::vector<rank_entry> ranks;  ///< replica by replica, rank by rank
  std::vector<shard_entry> shards;
  actor_ref data, balancer, ema;  ///< ema may be empty
  std::shared_ptr<data_actor_setup> data_state;
  std::shared_ptr<bias_balancer> balancer_state;
  std::shared_ptr<ema_actor_setup> ema_state;
  /// The checkpoint name of each MoE layer's router bias (the balancer's state, kept once in
  /// the model's weights), found by the parameters' role.
  std::map<std::int64_t, std::string> router_bias_names;
  /// Which shard computes each routed expert of each MoE layer (the topology's lists until a
  /// rebalance moves experts; expert_rebalance.hpp). Empty without expert shards.
  expert_placement placement;

  /// Ranks then shards, by name: every holder of parameters.
  named_actors holders() const;
  /// The pipeline ranks, by name.
  named_actors stages() const;
};

/// How many micro-batches each step runs (schedule.micro_batches after the optional ramp).
batch_ramp batch_ramp_of(const topology& topo);

/// The plugin libraries of the model's layer roles (attention, moe, mtp) and their options.
model_plugins load_model_plugins(plugin_registry& registry, const topology& topo);

/// The GEMM plugin of `precision = "fp8"` (null: the runtime's built-in GEMM).
std::shared_ptr<const plugin_library> load_gemm_plugin(plugin_registry& registry,
                                                       const topology& topo);

/// The precision of the runtime's built-in GEMM a job of `topo` starts with, what computes where
/// no GEMM plugin does: bf16 under model.precision = "bf16" (cuBLASLt BF16 on the GPU stages),
/// fp32 otherwise. `troupe ctl JOB swap --plugin gemm --builtin fp32|bf16` changes it.
precision builtin_gemm_precision(const topology& topo);

/// Builds the state of every role of this process: the data stream first (a corpus that does not
/// fit fails before the model is built), then the expert shards and pipeline ranks with their
/// parameters initialised, the balancer and the EMA. Ranks of other processes are built too, for
/// the names of what they hold, but never initialised or run here.
training_roles build_training_roles(const topology& topo, job_process& process,
                                    const model_plugins& plugins);

/// Spawns the roles (here, or a proxy for another process's) and introduces them to each other:
/// the EMA, the shards, the ranks (with the shard handles and their peers), the balancer and the
/// data loader. A multi-process job then waits at the barrier.
void spawn_training_roles(training_roles& roles, job_process& process, const topology& topo);

}  // namespace troupe
