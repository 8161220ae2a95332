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

expert_placement serving_placement(const model_config& config,
                                   const replicated_experts_options& options) {
  if (config.n_routed_experts <= 0) fail("expert shards need a model with routed experts");
  if (options.shards < 1) fail("expert shards: {} shards", options.shards);
  if (options.shards > config.n_routed_experts + options.redundant)
    fail("{} expert shards for {} routed experts and {} redundant replicas: a shard would be empty",
         options.shards, config.n_routed_experts, options.redundant);
  return initial_placement(moe_layers_of(config), config.n_routed_experts, options.shards,
                           std::max<std::int64_t>(1, config.n_group), options.redundant);
}

replicated_experts::replicated_experts(const model_config& config,
                                       std::shared_ptr<const plugin_library> moe,
                                       std::string moe_options, replicated_experts_options options,
                                       loader load, const exec_context& context)
    : replicated_experts(config, options, [&](const expert_placement& initial) {
        return std::make_unique<local_shard_set>(config, std::move(moe), std::move(moe_options),
                                                 initial, load, context);
      }) {}

replicated_experts::replicated_experts(const model_config& config,
                                       replicated_experts_options options,
                                       const shard_set_factory& make)
    : config_(config), options_(options), last_(std::chrono::steady_clock::now()) {
  if (options_.interval < 0) fail("expert shards: a rebalance interval of {} s", options_.interval);
  placement_ = serving_placement(config_, options_);
  shards_ = make(placement_);
  sharded_experts::options wire;
  wire.replicas = true;
  backend_ = std::make_unique<sharded_experts>(
      placement_.layers.begin()->second, config_.n_routed_experts, shards_->transport(), wire);
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
  if (options_.interval <= 0 || swap_pending_) return;  // a swap's successors fit these shards
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_).count() < options_.interval) return;
  // The next attempt waits for the next interval and the load seen by then, failed or not.
  rebalance_observed();
}

std::int64_t replicated_experts::prepare_swap(const std::shared_ptr<const plugin_library>& library,
                                              const std::string& path) {
  // NOTES: until the commit or the abort the experts stay where they are: the successors are
  // built for the shards as they are now.
  swap_pending_ = true;
  return shards_->prepare_swap(library, path);
}

void replicated_experts::commit_swap() {
  swap_pending_ = false;
  shards_->commit_swap();
}

void replicated_experts::abort_swap() {
  swap_pending_ = false;
  shards_->abort_swap();
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
  if (swap_pending_)
    fail("the experts stay where they are while a moe swap is prepared: re-place them after it");
  const auto start = std::chrono::steady_clock::now();
  replacement_report report;
  const expert_placement target =
      balanced_placement(placement_, load, config_.n_routed_experts,
                         std::max<std::int64_t>(1, config_.n_group), options_.redundant);
  if (!(target == placement_)) {
    // The routing is checked first (it refuses while a micro-batch is in flight); once the
    // shards moved, setting it cannot fail.
    backend_->check_placement(target.layers);
    shards_->move_to(target, report);
    backend_->set_placement(target.layers);
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
