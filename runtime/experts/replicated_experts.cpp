#include "runtime/experts/replicated_experts.hpp"

#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "runtime/core/error.hpp"
#include "runtime/metrics/rebalance_metrics.hpp"

namespace troupe {

struct replicated_experts::metric_families {
  rebalance_metrics rebalances;
  prometheus::Family<prometheus::Gauge>& replicas;
};

namespace {

std::vector<std::int64_t> moe_layers_of(const model_config& c) {
  std::vector<std::int64_t> layers;
  for (std::int64_t l = c.first_k_dense_replace;
       l < c.num_hidden_layers + c.num_nextn_predict_layers; ++l)
    layers.push_back(l);
  return layers;
}

}  // namespace

replicated_experts::replicated_experts(const model_config& config,
                                       std::shared_ptr<const plugin_library> moe,
                                       std::string moe_options, replicated_experts_options options,
                                       loader load, const exec_context& context)
    : config_(config),
      moe_(std::move(moe)),
      moe_options_(std::move(moe_options)),
      options_(options),
      context_(context),
      last_(std::chrono::steady_clock::now()) {
  if (config_.n_routed_experts <= 0) fail("expert shards need a model with routed experts");
  if (options_.shards < 1) fail("expert shards: {} shards", options_.shards);
  if (options_.shards > config_.n_routed_experts + options_.redundant)
    fail("{} expert shards for {} routed experts and {} redundant replicas: a shard would be empty",
         options_.shards, config_.n_routed_experts, options_.redundant);
  if (options_.interval < 0) fail("expert shards: a rebalance interval of {} s", options_.interval);
  placement_ = initial_placement(moe_layers_of(config_), config_.n_routed_experts, options_.shards,
                                 std::max<std::int64_t>(1, config_.n_group), options_.redundant);
  std::vector<expert_shard*> pointers;
  for (std::int64_t s = 0; s < options_.shards; ++s) {
    shards_.push_back(
        std::make_unique<expert_shard>(config_, moe_, placement_.of_shard(s), 1, moe_options_));
    load(shards_.back()->parameters());
    pointers.push_back(shards_.back().get());
  }
  transport_ = std::make_unique<local_expert_transport>(pointers, context_);
  sharded_experts::options wire;
  wire.replicas = true;
  backend_ = std::make_unique<sharded_experts>(placement_.layers.begin()->second,
                                               config_.n_routed_experts, *transport_, wire);
  backend_->set_placement(placement_.layers);
  if (options_.metrics != nullptr) {
    metrics_ = std::make_unique<metric_families>(metric_families{
        rebalance_metrics(*options_.metrics, {{"engine", options_.engine}}),
        prometheus::BuildGauge()
            .Name("troupe_expert_replicas")
            .Help("Copies of each routed expert on the expert shards, by MoE layer and expert")
            .Register(*options_.metrics),
    });
    publish_placement();
  }
}

replicated_experts::~replicated_experts() = default;

void replicated_experts::publish_placement() {
  if (!metrics_) return;
  for (const auto& [layer, lists] : placement_.layers) {
    std::vector<int> copies(static_cast<std::size_t>(config_.n_routed_experts), 0);
    for (const auto& ids : lists)
      for (const std::int64_t e : ids) ++copies[static_cast<std::size_t>(e)];
    for (std::size_t e = 0; e < copies.size(); ++e)
      metrics_->replicas
          .Add({{"engine", options_.engine},
                {"layer", std::to_string(layer)},
                {"expert", std::to_string(e)}})
          .Set(copies[e]);
  }
}

void replicated_experts::after_step(const layer_expert_load& load) {
  for (const auto& [layer, counts] : load) {
    auto& total = observed_[layer];
    total.resize(std::max(total.size(), counts.size()), 0);
    for (std::size_t e = 0; e < counts.size(); ++e) total[e] += counts[e];
    if (metrics_ && placement_.layers.count(layer) != 0)
      metrics_->rebalances.shard_imbalance(layer, placement_.imbalance(layer, counts));
  }
  if (options_.interval <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_).count() < options_.interval) return;
  // The next attempt waits for the next interval and the load seen by then, failed or not.
  rebalance_observed();
}

std::vector<std::unique_ptr<expert_shard>> replicated_experts::shards_on(
    const std::shared_ptr<const plugin_library>& library) const {
  std::vector<std::unique_ptr<expert_shard>> next;
  for (const auto& shard : shards_) {
    next.push_back(
        std::make_unique<expert_shard>(config_, library, shard->layer_experts(), 1, moe_options_));
    for (parameter* p : next.back()->parameters().all()) {
      const parameter* from = shard->parameters().find(p->name);
      if (from == nullptr)
        fail("the moe plugin '{}' declares '{}', which the shard's plugin does not", library->name,
             p->name);
      p->value.copy_from(from->value);
    }
  }
  return next;
}

void replicated_experts::adopt(std::vector<std::unique_ptr<expert_shard>> shards,
                               std::shared_ptr<const plugin_library> library) {
  if (shards.size() != shards_.size())
    fail("adopt: {} shards for {}", shards.size(), shards_.size());
  std::vector<expert_shard*> pointers;
  for (std::size_t s = 0; s < shards.size(); ++s) {
    shards_[s] = std::move(shards[s]);
    pointers.push_back(shards_[s].get());
  }
  transport_->set_shards(pointers);
  moe_ = std::move(library);
}

replacement_report replicated_experts::rebalance_observed() {
  const layer_expert_load seen = std::move(observed_);
  observed_.clear();
  last_ = std::chrono::steady_clock::now();
  try {
    return rebalance(seen);
  } catch (const std::exception&) {
    if (metrics_) metrics_->rebalances.record("failed", 0, 0, 0.0);
    throw;
  }
}

replacement_report replicated_experts::rebalance(const layer_expert_load& load) {
  const auto start = std::chrono::steady_clock::now();
  replacement_report report;
  const expert_placement target =
      balanced_placement(placement_, load, config_.n_routed_experts,
                         std::max<std::int64_t>(1, config_.n_group), options_.redundant);
  if (!(target == placement_)) {
    // Every tensor of every shard by name: where a shard's new experts are copied from.
    std::map<std::string, const tensor*> everywhere;
    for (const auto& shard : shards_)
      for (parameter* p : shard->parameters().all()) everywhere.emplace(p->name, &p->value);
    std::vector<std::unique_ptr<expert_shard>> next(shards_.size());
    for (std::size_t s = 0; s < shards_.size(); ++s) {
      const auto experts = target.of_shard(static_cast<std::int64_t>(s));
      if (experts == shards_[s]->layer_experts()) continue;
      next[s] =
          std::make_unique<expert_shard>(config_, shards_[s]->library(), experts, 1, moe_options_);
      for (parameter* p : next[s]->parameters().all()) {
        auto it = everywhere.find(p->name);
        if (it == everywhere.end()) fail("rebalance: no shard holds '{}'", p->name);
        p->value.copy_from(*it->second);
        if (shards_[s]->parameters().find(p->name) == nullptr) {
          report.bytes += static_cast<std::int64_t>(p->value.nbytes());
          if (p->name.ends_with("down_proj.weight")) ++report.copied;
        }
      }
    }
    // The routing first: it checks the placement and refuses (changing nothing) while a
    // micro-batch is in flight; the shard swap after it cannot fail.
    backend_->set_placement(target.layers);
    std::vector<expert_shard*> pointers;
    for (std::size_t s = 0; s < shards_.size(); ++s) {
      if (next[s]) shards_[s] = std::move(next[s]);
      pointers.push_back(shards_[s].get());
    }
    transport_->set_shards(pointers);
    placement_ = target;
    report.changed = true;
    ++replacements_;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (metrics_) {
    metrics_->rebalances.record(report.changed ? "moved" : "unchanged", report.copied, report.bytes,
                                report.seconds);
    publish_placement();
  }
  return report;
}

}  // namespace troupe
