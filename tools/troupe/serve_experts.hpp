#pragma once

// `troupe serve` with [serve] expert_hosts: the serving instances' expert shards in processes of
// their own. Shard s of every instance (on any serving rank) lives on expert host
// s * hosts / expert_shards, as an expert-shard actor without an optimizer
// (runtime/experts/expert_shard_actor.hpp) exposed under expert_shard_name; the instance reaches
// its shards through a remote_shard_set (runtime/experts/remote_shard_set.hpp), and both sides
// start from the same serving_placement.

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/job/process_plugins.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/topology/topology.hpp"
#include "tools/troupe/serve_processes.hpp"

namespace troupe::cli {

/// The serving instances (engines) of serving rank `rank`: "serve" alone when prefill and decode
/// share a batch; rank 0 prefill0, ... and, without decode hosts, decode0, ...; a decode rank
/// decode0, ...
std::vector<std::string> engines_of_rank(const serve_spec& spec, int rank);

/// The index of the expert host of shard `shard` of `shards`.
int expert_host_of(std::int64_t shard, std::int64_t shards, std::size_t hosts);

/// The name shard `shard` of `engine` on serving rank `rank` is exposed under.
std::string expert_shard_name(int rank, const std::string& engine, std::int64_t shard);

/// The shards of `engine` (serving rank `rank`) on the expert processes.
replicated_experts::shard_set_factory remote_expert_shards(serve_processes& processes,
                                                           const serve_spec& spec, int rank,
                                                           const std::string& engine);

/// An expert process's shards: those of its host, for every instance of every serving rank,
/// loaded from the checkpoint and exposed. They compute on this object's worker pool and answer
/// until the actor runtime stops: keep it alive until then.
class serving_expert_shards {
 public:
  serving_expert_shards(serve_processes& processes, const hf_checkpoint& checkpoint,
                        const serve_spec& spec, int threads);
  serving_expert_shards(const serving_expert_shards&) = delete;
  serving_expert_shards& operator=(const serving_expert_shards&) = delete;

  std::int64_t count() const { return count_; }

 private:
  plugin_registry registry_;
  model_plugins plugins_;
  thread_pool pool_;
  exec_context context_;
  std::shared_ptr<process_plugins> swaps_;
  std::int64_t count_ = 0;
};

}  // namespace troupe::cli
