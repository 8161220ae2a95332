#include "tools/troupe/serve_experts.hpp"

#include <fmt/format.h>

#include "runtime/experts/expert_shard_actor.hpp"
#include "runtime/experts/remote_shard_set.hpp"

namespace troupe::cli {

std::vector<std::string> engines_of_rank(const serve_spec& spec, int rank) {
  if (spec.decode_instances == 0) return {"serve"};
  std::vector<std::string> engines;
  if (rank == 0)
    for (std::int64_t i = 0; i < spec.prefill_instances; ++i)
      engines.push_back(fmt::format("prefill{}", i));
  if ((rank == 0) == spec.decode_hosts.empty())
    for (std::int64_t i = 0; i < spec.decode_instances; ++i)
      engines.push_back(fmt::format("decode{}", i));
  return engines;
}

int expert_host_of(std::int64_t shard, std::int64_t shards, std::size_t hosts) {
  return static_cast<int>(shard * static_cast<std::int64_t>(hosts) / shards);
}

std::string expert_shard_name(int rank, const std::string& engine, std::int64_t shard) {
  return fmt::format("experts_{}_{}_{}", rank, engine, shard);
}

replicated_experts::shard_set_factory remote_expert_shards(serve_processes& processes,
                                                           const serve_spec& spec, int rank,
                                                           const std::string& engine) {
  return [&processes, shards = spec.expert_shards, hosts = spec.expert_hosts, rank,
          engine](const expert_placement& initial) -> std::unique_ptr<expert_shard_set> {
    std::vector<actor_ref> actors;
    std::vector<std::string> names;
    for (std::int64_t s = 0; s < shards; ++s) {
      const int host = expert_host_of(s, shards, hosts.size());
      const int owner = processes.first_expert_rank() + host;
      actors.push_back(processes.job().remote(expert_shard_name(rank, engine, s), owner));
      names.push_back(fmt::format("expert shard {} of {} (rank {}, {})", s, engine, owner,
                                  hosts[static_cast<std::size_t>(host)]));
    }
    return std::make_unique<remote_shard_set>(processes.runtime(), std::move(actors),
                                              std::move(names), initial);
  };
}

serving_expert_shards::serving_expert_shards(serve_processes& processes,
                                             const hf_checkpoint& checkpoint,
                                             const serve_spec& spec, int threads)
    : plugins_(load_model_plugins(registry_, checkpoint.config())),
      pool_(threads),
      context_(device::cpu(), pool_),
      swaps_(std::make_shared<process_plugins>(registry_, context_, nullptr)) {
  const model_config& config = checkpoint.config();
  replicated_experts_options options;
  options.shards = spec.expert_shards;
  options.redundant = spec.redundant_experts;
  const expert_placement placement = serving_placement(config, options);
  const int host = processes.rank() - processes.first_expert_rank();
  shard_factory rebuild = [config, moe_options = plugins_.moe_options](
                              std::shared_ptr<const plugin_library> moe,
                              const std::map<std::int64_t, std::vector<std::int64_t>>& experts) {
    return std::make_unique<expert_shard>(config, std::move(moe), experts, 1, moe_options);
  };
  for (int rank = 0; rank <= processes.decode_processes(); ++rank)
    for (const std::string& engine : engines_of_rank(spec, rank))
      for (std::int64_t s = 0; s < spec.expert_shards; ++s) {
        if (expert_host_of(s, spec.expert_shards, spec.expert_hosts.size()) != host) continue;
        auto setup = std::make_shared<shard_actor_setup>();
        setup->shard = rebuild(plugins_.moe, placement.of_shard(s));
        load_parameters(checkpoint, setup->shard->parameters(), &pool_);
        setup->context = &context_;
        setup->plugins = swaps_;
        setup->rebuild = rebuild;
        processes.job().expose(expert_shard_name(rank, engine, s),
                               spawn_expert_shard_actor(processes.runtime(), setup));
        ++count_;
      }
}

}  // namespace troupe::cli
