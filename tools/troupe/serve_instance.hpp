#pragma once

// `troupe serve`'s model instances: one per colocated engine, or per prefill and decode instance
// of the process, each with its own weights, worker pool, KV cache and, with [serve]
// expert_shards, expert shards of its own (in this process, or with expert_hosts in the expert
// processes: serve_experts.hpp).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <prometheus/registry.h>

#include "runtime/exec/exec_context.hpp"
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/inference/cached_model.hpp"
#include "runtime/inference/latent_cache.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/serve/disaggregated_engine.hpp"
#include "runtime/serve/serving_control.hpp"
#include "runtime/topology/topology.hpp"
#include "tools/troupe/model_input.hpp"

namespace troupe::cli {

/// A model loaded for serving: its weights, worker pool, cached model and KV cache, and with
/// [serve] expert_shards its routed experts on expert shards of their own (redundant copies
/// placed and re-placed by EPLB).
struct model_instance {
  model_instance(const hf_checkpoint& checkpoint, bool mtp, device where, int threads,
                 const latent_cache_shape& shape, std::uint64_t budget, const serve_spec& spec,
                 prometheus::Registry* metrics, const std::string& engine,
                 const replicated_experts::shard_set_factory& remote_shards = {})
      : name(engine),
        placed(where),
        plugins(load_model_plugins(registry, checkpoint.config())),
        pool(threads),
        exec(where, pool),
        experts(make_experts(checkpoint, spec, metrics, engine, remote_shards)),
        runner(checkpoint.config(), {}, with_experts(plugins, experts.get()), options(mtp, where)),
        cached(runner),
        cache(shape, budget, where) {
    load_parameters(checkpoint, runner.parameters(), &pool);
  }
  static model_options options(bool mtp, device where) {
    model_options o;
    o.mtp = mtp;
    o.where = where;
    return o;
  }
  static model_plugins with_experts(model_plugins p, replicated_experts* experts) {
    if (experts != nullptr) p.experts = &experts->backend();
    return p;
  }
  std::unique_ptr<replicated_experts> make_experts(
      const hf_checkpoint& checkpoint, const serve_spec& spec, prometheus::Registry* metrics,
      const std::string& engine, const replicated_experts::shard_set_factory& remote) {
    if (spec.expert_shards == 0) return nullptr;
    replicated_experts_options o;
    o.shards = spec.expert_shards;
    o.redundant = spec.redundant_experts;
    o.interval = spec.rebalance_interval;
    o.metrics = metrics;
    o.engine = engine;
    if (remote) return std::make_unique<replicated_experts>(checkpoint.config(), o, remote);
    return std::make_unique<replicated_experts>(
        checkpoint.config(), plugins.moe, plugins.moe_options, o,
        [&](parameter_store& store) { load_parameters(checkpoint, store, &pool); }, exec);
  }
  /// Between steps: the experts re-place themselves when their interval has passed. A failed
  /// re-placement changes nothing (it fails before any shard is replaced): it is reported and
  /// serving goes on with the placement it has.
  void after_step(const std::map<std::int64_t, std::vector<std::int64_t>>& load) {
    try {
      experts->after_step(load);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe serve: the expert re-placement failed, the placement stays: {}\n",
                 e.what());
    }
  }
  serving_instance view() {
    serving_instance v{&cached, &cache, &exec, {}};
    if (experts) v.after_step = [this](const auto& load) { after_step(load); };
    return v;
  }
  /// What `troupe ctl` reaches (serving_control.hpp).
  controlled_instance control_view() {
    return {name, &runner, &registry, &plugins, experts.get(), placed};
  }

  std::string name;  ///< its engine's name in metrics and replies: serve, prefill0, decode0, ...
  device placed;
  plugin_registry registry;
  model_plugins plugins;
  thread_pool pool;
  exec_context exec;
  std::unique_ptr<replicated_experts> experts;
  model_runner runner;
  cached_model cached;
  latent_cache cache;
};

}  // namespace troupe::cli
