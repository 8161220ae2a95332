#include "runtime/train/training_roles.hpp"

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "runtime/balancer/balancer_actor.hpp"
#include "runtime/job/holder_messages.hpp"
#include "runtime/stage/stage_messages.hpp"

namespace troupe {

namespace {

std::shared_ptr<const plugin_library> load_role(plugin_registry& registry, const topology& topo,
                                                plugin_kind role, const std::string& fallback) {
  const plugin_choice* choice = topo.plugin_for(role);
  const std::string reference =
      choice == nullptr ? fallback
                        : (choice->resolved ? choice->resolved->string() : choice->reference);
  plugin_load_options options;
  options.expected_kind = role;
  return registry.load(reference, options);
}

std::string options_of(const topology& topo, plugin_kind role) {
  const plugin_choice* choice = topo.plugin_for(role);
  return choice == nullptr ? "{}" : choice->options_json;
}

/// The MoE layers of the model, MTP blocks included.
std::vector<std::int64_t> moe_layers(const model_config& c) {
  std::vector<std::int64_t> layers;
  for (std::int64_t l = 0; l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l)
    if (c.n_routed_experts > 0 && l >= c.first_k_dense_replace) layers.push_back(l);
  return layers;
}

std::shared_ptr<data_actor_setup> build_data(const topology& topo) {
  const train_spec& tr = topo.train;
  auto data = std::make_shared<data_actor_setup>();
  data->corpus = std::make_unique<text_corpus>(text_corpus::load(topo.data_source.corpus));
  data->tokenizer = std::make_unique<byte_tokenizer>(topo.model);
  data->stream =
      std::make_unique<token_stream>(*data->corpus, *data->tokenizer, topo.data_source.fim_rate,
                                     static_cast<std::uint64_t>(tr.seed));
  data->micro_batch_size = tr.micro_batch_size;
  data->sequence_length = tr.sequence_length;
  return data;
}

adamw_settings optimizer_settings(const train_spec& tr) {
  return {tr.beta1, tr.beta2, tr.epsilon, tr.weight_decay};
}

wire_precision wire_precision_of(precision p) {
  switch (p) {
    case precision::fp8:
      return wire_precision::fp8;
    case precision::bf16:
      return wire_precision::bf16;
    case precision::fp32:
      break;
  }
  return wire_precision::f32;
}

/// Copies of each stage per replica: two under DualPipe (its two directions), else one.
std::int32_t copies_of(const topology& topo) {
  return topo.schedule.kind == schedule_kind::dualpipe ? 2 : 1;
}

std::vector<std::vector<std::int64_t>> shard_experts_of(const topology& topo) {
  std::vector<std::vector<std::int64_t>> experts;
  if (topo.model.n_routed_experts == 0) return experts;
  for (const auto& spec : topo.expert_shards)
    experts.emplace_back(spec.experts.begin(), spec.experts.end());
  return experts;
}

void build_shards(training_roles& roles, const topology& topo, job_process& process,
                  const model_plugins& plugins) {
  const auto shard_experts = shard_experts_of(topo);
  const std::int32_t sources = copies_of(topo) * topo.data;
  for (std::size_t i = 0; i < shard_experts.size(); ++i) {
    const std::string name = fmt::format("shard{}", i);
    if (!process.is_local(name)) {
      roles.shards.push_back({name, actor_ref(), nullptr});
      continue;
    }
    auto setup = std::make_shared<shard_actor_setup>();
    setup->rebuild = [config = topo.model, sources, options = plugins.moe_options](
                         std::shared_ptr<const plugin_library> moe,
                         const std::map<std::int64_t, std::vector<std::int64_t>>& experts) {
      return std::make_unique<expert_shard>(config, std::move(moe), experts, sources, options);
    };
    setup->optimizer_settings = optimizer_settings(topo.train);
    setup->shard = std::make_unique<expert_shard>(topo.model, plugins.moe, shard_experts[i],
                                                  sources, plugins.moe_options);
    setup->shard->parameters().initialize(static_cast<std::uint64_t>(topo.train.seed),
                                          &process.context().pool());
    setup->optimizer = std::make_unique<adamw>(optimizer_settings(topo.train));
    setup->optimizer->attach(setup->shard->parameters());
    setup->context = &process.context();
    setup->plugins = process.plugins();
    roles.shards.push_back({name, actor_ref(), setup});
  }
}

/// The chunks of pipeline rank `r` of replica `d`: its stage (or two, under DualPipe).
std::vector<stage_chunk> build_chunks(const topology& topo, const schedule_plan& plan,
                                      std::int32_t d, std::int32_t r, bool here,
                                      const model_plugins& plugins, stage_actor_setup& setup,
                                      thread_pool& pool) {
  const model_config& config = topo.model;
  const train_spec& tr = topo.train;
  const auto shard_experts = shard_experts_of(topo);
  std::vector<stage_chunk> chunks;
  for (auto [stage, copy] : plan.chunks(r)) {
    const auto& layers = topo.stages.at(static_cast<std::size_t>(stage)).layers;
    if (layers.empty()) fail("stage {} has no layers", stage);
    for (std::size_t i = 1; i < layers.size(); ++i)
      if (layers[i] != layers[i - 1] + 1)
        fail("stage {}: its layers must be consecutive to run as one slice", stage);
    stage_chunk chunk;
    chunk.stage = stage;
    chunk.copy = copy;
    model_plugins chunk_plugins = plugins;
    if (setup.transport) {
      sharded_experts::options wire;
      wire.dispatch = wire_precision_of(topo.expert_dispatch);
      wire.combine = wire_precision_of(topo.expert_combine);
      wire.source = d * copies_of(topo) + copy;
      // The shards' hosts, numbered as node-limited routing numbers them; the stage's own.
      wire.shard_host = topo.shard_nodes();
      const auto& replicas = topo.stages.at(static_cast<std::size_t>(stage)).replicas;
      for (std::size_t s = 0; s < topo.expert_shards.size(); ++s)
        if (static_cast<std::size_t>(d) < replicas.size() &&
            topo.expert_shards[s].place.host == replicas[static_cast<std::size_t>(d)].host)
          wire.own_host = wire.shard_host[s];
      chunk.experts = std::make_unique<sharded_experts>(shard_experts, config.n_routed_experts,
                                                        *setup.transport, wire);
      chunk_plugins.experts = chunk.experts.get();
    }
    model_slice slice{layers.front(), layers.back() + 1, stage == 0, stage == topo.pipeline - 1};
    model_options options{tr.mtp_weight, true};
    const auto& replicas = topo.stages.at(static_cast<std::size_t>(stage)).replicas;
    // The stage's device for this replica where it runs in this process (a chunk held for its
    // shape only, elsewhere, stays on the host).
    if (here && static_cast<std::size_t>(d) < replicas.size())
      options.where = replicas[static_cast<std::size_t>(d)].where;
    chunk.runner = std::make_unique<model_runner>(config, slice, chunk_plugins, options);
    if (here) {
      chunk.runner->parameters().initialize(static_cast<std::uint64_t>(tr.seed), &pool);
      chunk.optimizer = std::make_unique<adamw>(optimizer_settings(tr));
      chunk.optimizer->attach(chunk.runner->parameters());
    }
    chunks.push_back(std::move(chunk));
  }
  return chunks;
}

void build_ranks(training_roles& roles, const topology& topo, job_process& process,
                 const model_plugins& plugins) {
  const bool sharded = !shard_experts_of(topo).empty();
  const schedule_plan plan =
      schedule_plan::build(topo.schedule.kind, topo.pipeline, batch_ramp_of(topo).at(0));
  for (std::int32_t d = 0; d < topo.data; ++d)
    for (std::int32_t r = 0; r < topo.pipeline; ++r) {
      const std::string name =
          topo.data > 1 ? fmt::format("stage{}.r{}", r, d) : fmt::format("stage{}", r);
      auto setup = std::make_shared<stage_actor_setup>();
      setup->plugins = process.plugins();
      // The shard handles come when the shards are spawned.
      if (sharded) setup->transport = std::make_unique<actor_expert_transport>(process.runtime());
      auto chunks = build_chunks(topo, plan, d, r, process.is_local(name), plugins, *setup,
                                 process.context().pool());
      setup->rank = std::make_unique<pipeline_rank>(r, std::move(chunks), process.context(),
                                                    builtin_gemm_precision(topo));
      roles.ranks.push_back({name, d, r, actor_ref(), setup});
    }
}

/// Who writes what: each checkpoint name once, by its first holder; parameters held more than
/// once are replicated (their gradients are summed by the coordinator).
void assign_ownership(training_roles& roles) {
  std::map<std::string, int> holders;
  std::set<std::string> claimed;
  for (auto& entry : roles.ranks) {
    std::set<std::string> owned;
    for (auto& chunk : entry.setup->rank->chunks()) {
      for (const auto& [name, value] : chunk.runner->checkpoint_tensors())
        if (claimed.insert(name).second) owned.insert(name);
      for (parameter* p : chunk.runner->parameters().all())
        if (p->spec.trainable()) ++holders[p->name];
    }
    entry.setup->owned = std::move(owned);
  }
  std::set<std::string> replicated;
  for (const auto& [name, count] : holders)
    if (count > 1) replicated.insert(name);
  for (auto& entry : roles.ranks) entry.setup->replicated = replicated;
}

/// ZeRO-1: the replicated parameters' slots (rank by rank, chunk by chunk), the same in every
/// process; each local rank's optimizer keeps its ranges only.
void shard_optimizer_state(training_roles& roles, std::int64_t bucket_elements) {
  zero_layout layout;
  for (std::size_t i = 0; i < roles.ranks.size(); ++i) {
    auto& chunks = roles.ranks[i].setup->rank->chunks();
    for (std::size_t c = 0; c < chunks.size(); ++c)
      for (parameter* p : chunks[c].runner->parameters().all())
        if (p->spec.trainable() && roles.ranks[i].setup->replicated.count(p->name)) {
          auto& entry = layout.parameters[p->name];
          entry.numel = p->value.numel();
          entry.slots.push_back({static_cast<std::int32_t>(i), static_cast<std::int32_t>(c)});
        }
  }
  for (std::size_t i = 0; i < roles.ranks.size(); ++i) {
    auto& setup = *roles.ranks[i].setup;
    auto sharding =
        std::make_shared<zero_sharding>(layout, static_cast<std::int32_t>(i), bucket_elements);
    setup.rank->keep_ranges(*sharding);
    setup.zero = std::move(sharding);
  }
}

}  // namespace

batch_ramp batch_ramp_of(const topology& topo) {
  const train_spec& tr = topo.train;
  return {topo.schedule.micro_batches,
          tr.batch_ramp_steps > 0 ? tr.batch_ramp_start : topo.schedule.micro_batches,
          tr.batch_ramp_steps, copies_of(topo)};
}

named_actors training_roles::holders() const {
  named_actors all = stages();
  for (const auto& s : shards) all.emplace_back(s.name, s.actor);
  return all;
}

named_actors training_roles::stages() const {
  named_actors all;
  for (const auto& entry : ranks) all.emplace_back(entry.name, entry.actor);
  return all;
}

model_plugins load_model_plugins(plugin_registry& registry, const topology& topo) {
  const model_config& config = topo.model;
  model_plugins plugins;
  plugins.attention = load_role(registry, topo, plugin_kind::attention, "mla");
  plugins.attention_options = options_of(topo, plugin_kind::attention);
  if (config.n_routed_experts > 0) {
    plugins.moe = load_role(registry, topo, plugin_kind::moe, "moe");
    nlohmann::json moe_options = nlohmann::json::parse(options_of(topo, plugin_kind::moe));
    moe_options["balance_loss_alpha"] = topo.train.balance_loss_alpha;
    if (topo.max_nodes_per_token > 0) {  // node-limited routing over the shards' hosts
      moe_options["node_of_expert"] = topo.node_of_experts();
      moe_options["max_nodes_per_token"] = topo.max_nodes_per_token;
    }
    plugins.moe_options = moe_options.dump();
  }
  if (config.num_nextn_predict_layers > 0)
    plugins.mtp = load_role(registry, topo, plugin_kind::mtp, "mtp");
  return plugins;
}

std::shared_ptr<const plugin_library> load_gemm_plugin(plugin_registry& registry,
                                                       const topology& topo) {
  if (topo.gemm_precision != precision::fp8) return nullptr;
  return load_role(registry, topo, plugin_kind::gemm, "fp8");
}

precision builtin_gemm_precision(const topology& topo) {
  return topo.gemm_precision == precision::bf16 ? precision::bf16 : precision::fp32;
}

training_roles build_training_roles(const topology& topo, job_process& process,
                                    const model_plugins& plugins) {
  training_roles roles;
  if (process.is_local("data")) roles.data_state = build_data(topo);
  if (topo.ema.enabled && process.is_local("ema")) {
    roles.ema_state = std::make_shared<ema_actor_setup>();
    roles.ema_state->tracker = std::make_unique<ema_tracker>(topo.ema.decay);
    roles.ema_state->config = topo.model;
  }
  build_shards(roles, topo, process, plugins);
  roles.placement = expert_placement::uniform(moe_layers(topo.model), shard_experts_of(topo));
  build_ranks(roles, topo, process, plugins);
  assign_ownership(roles);
  if (topo.train.zero == 1) shard_optimizer_state(roles, topo.train.zero_bucket_elements);
  for (auto& entry : roles.ranks) {
    roles.router_bias_names.merge(entry.setup->rank->router_bias_names());
    if (!process.is_local(entry.name)) entry.setup.reset();
  }
  roles.balancer_state = std::make_shared<bias_balancer>(
      balancer_settings{topo.balancer.gamma, topo.balancer.recenter}, moe_layers(topo.model),
      topo.model.n_routed_experts);
  return roles;
}

void spawn_training_roles(training_roles& roles, job_process& process, const topology& topo) {
  actor_runtime& runtime = process.runtime();
  if (topo.ema.enabled)
    roles.ema = process.place("ema", [&] { return spawn_ema_actor(runtime, roles.ema_state); });
  std::vector<actor_ref> shard_actors;
  for (auto& s : roles.shards) {
    s.actor = process.place(s.name, [&] {
      s.setup->ema = roles.ema;
      return spawn_expert_shard_actor(runtime, s.setup);
    });
    shard_actors.push_back(s.actor);
  }
  for (auto& entry : roles.ranks)
    entry.actor = process.place(entry.name, [&] {
      entry.setup->ema = roles.ema;
      entry.setup->ema_wait = topo.ema.wait;
      if (entry.setup->transport) entry.setup->transport->set_shards(shard_actors);
      return spawn_stage_actor(runtime, entry.setup);
    });
  if (topo.train.zero == 1) {
    zero_peers all;
    for (auto& entry : roles.ranks) all.ranks.push_back(entry.actor);
    for (auto& entry : roles.ranks)
      if (entry.setup) runtime.tell(entry.actor, all);
  }
  for (std::int32_t d = 0; d < topo.data; ++d) {
    stage_peers peers;
    for (auto& entry : roles.ranks)
      if (entry.replica == d) peers.peers.push_back(entry.actor);
    for (auto& entry : roles.ranks)
      if (entry.replica == d && entry.setup) runtime.tell(entry.actor, peers);
  }
  roles.balancer = process.place(
      "balancer", [&] { return spawn_balancer_actor(runtime, roles.balancer_state); });
  roles.data = process.place("data", [&] { return spawn_data_actor(runtime, roles.data_state); });
  if (cluster* processes = process.processes()) {
    // A stage waiting for another process's activations would wait forever when that process
    // dies: tell the local stages, which fail their step with the news.
    std::vector<actor_ref> local_stages;
    for (auto& entry : roles.ranks)
      if (entry.setup) local_stages.push_back(entry.actor);
    processes->on_failure([local_stages, &runtime](int, const std::string& why) {
      for (const auto& stage : local_stages) runtime.tell(stage, process_lost{why});
    });
  }
  process.barrier();
}

}  // namespace troupe
