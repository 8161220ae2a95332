#include "runtime/train/training_metrics.hpp"

#include <chrono>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "runtime/metrics/rebalance_metrics.hpp"
#include "runtime/train/training_job.hpp"

namespace troupe {

struct training_metrics::families {
  prometheus::Family<prometheus::Counter>& routed;
  prometheus::Family<prometheus::Counter>& layer_routed;
  prometheus::Family<prometheus::Gauge>& bias;
  prometheus::Family<prometheus::Gauge>& imbalance;
  prometheus::Family<prometheus::Gauge>& loss;
  prometheus::Family<prometheus::Gauge>& tokens_per_second;
  prometheus::Family<prometheus::Gauge>& learning_rate;
  prometheus::Family<prometheus::Gauge>& grad_norm;
  prometheus::Family<prometheus::Counter>& steps;
  prometheus::Family<prometheus::Counter>& tokens;
  prometheus::Family<prometheus::Histogram>& step_duration;
  prometheus::Family<prometheus::Counter>& busy;
  prometheus::Family<prometheus::Counter>& bubble;
  prometheus::Family<prometheus::Gauge>& paused;
  prometheus::Family<prometheus::Gauge>& last_step;
  prometheus::Family<prometheus::Gauge>& plugin_info;
  prometheus::Family<prometheus::Counter>& swaps;
  prometheus::Family<prometheus::Histogram>& swap_pause;
  prometheus::Family<prometheus::Gauge>& expert_shard;
  prometheus::Family<prometheus::Counter>& across_hosts;
  rebalance_metrics rebalances;
};

training_metrics::training_metrics(prometheus::Registry& r, bool per_expert_series)
    : per_expert_(per_expert_series) {
  using namespace prometheus;
  families_ = std::make_unique<families>(families{
      BuildCounter()
          .Name("troupe_expert_tokens_routed_total")
          .Help("Tokens the router sent to each routed expert, by MoE layer and expert")
          .Register(r),
      BuildCounter()
          .Name("troupe_layer_tokens_routed_total")
          .Help("Token-to-expert assignments of each MoE layer (tokens x experts per token)")
          .Register(r),
      BuildGauge()
          .Name("troupe_router_bias")
          .Help("Selection bias of each routed expert after the last balancer update")
          .Register(r),
      BuildGauge()
          .Name("troupe_expert_load_max_over_mean")
          .Help("Largest expert load over the mean load of a MoE layer in the last step")
          .Register(r),
      BuildGauge()
          .Name("troupe_train_loss")
          .Help("Loss of the last step, by kind (main, mtp, balance)")
          .Register(r),
      BuildGauge()
          .Name("troupe_train_tokens_per_second")
          .Help("Training throughput of the last step")
          .Register(r),
      BuildGauge()
          .Name("troupe_train_learning_rate")
          .Help("Learning rate of the last step")
          .Register(r),
      BuildGauge()
          .Name("troupe_train_grad_norm")
          .Help("Global gradient norm of the last step, before clipping")
          .Register(r),
      BuildCounter().Name("troupe_train_steps_total").Help("Optimizer steps done").Register(r),
      BuildCounter().Name("troupe_train_tokens_total").Help("Tokens trained on").Register(r),
      BuildHistogram()
          .Name("troupe_train_step_duration_seconds")
          .Help("Wall time of a training step")
          .Register(r),
      BuildCounter()
          .Name("troupe_stage_busy_seconds_total")
          .Help("Time a pipeline rank spent computing its ops")
          .Register(r),
      BuildCounter()
          .Name("troupe_stage_bubble_seconds_total")
          .Help("Time a pipeline rank waited within steps (pipeline bubbles and transfers)")
          .Register(r),
      BuildGauge()
          .Name("troupe_train_paused")
          .Help("1 while an operator has paused the step loop (troupe ctl JOB pause)")
          .Register(r),
      BuildGauge()
          .Name("troupe_train_last_step_timestamp_seconds")
          .Help("Unix time at which the last step completed")
          .Register(r),
      BuildGauge()
          .Name("troupe_plugin_info")
          .Help("1 for the plugin serving each role, labelled with its name, version and load "
                "generation")
          .Register(r),
      BuildCounter()
          .Name("troupe_plugin_swaps_total")
          .Help("Hot swaps of plugins, by role and outcome (swapped, failed)")
          .Register(r),
      BuildHistogram()
          .Name("troupe_plugin_swap_pause_seconds")
          .Help("How long a hot swap held the step loop at a step boundary")
          .Register(r),
      BuildGauge()
          .Name("troupe_expert_shard")
          .Help("The expert shard that computes each routed expert, by MoE layer and expert")
          .Register(r),
      BuildCounter()
          .Name("troupe_expert_tokens_across_hosts_total")
          .Help("Tokens routed to expert shards on another host than their stage's: (token, "
                "host) pairs over every MoE layer")
          .Register(r),
      rebalance_metrics(r),
  });
  families_->paused.Add({}).Set(0);
}

training_metrics::~training_metrics() = default;

void training_metrics::record_step(const step_record& s,
                                   const std::map<std::int64_t, std::vector<float>>& biases) {
  auto& f = *families_;
  for (const auto& [layer, counts] : s.load) {
    const std::string l = std::to_string(layer);
    std::int64_t total = 0;
    for (std::size_t e = 0; e < counts.size(); ++e) {
      total += counts[e];
      if (per_expert_)
        f.routed.Add({{"layer", l}, {"expert", std::to_string(e)}})
            .Increment(static_cast<double>(counts[e]));
    }
    f.layer_routed.Add({{"layer", l}}).Increment(static_cast<double>(total));
    f.imbalance.Add({{"layer", l}}).Set(max_over_mean(counts));
    if (placement_.layers.count(layer) != 0)
      f.rebalances.shard_imbalance(layer, placement_.imbalance(layer, counts));
  }
  if (per_expert_)
    for (const auto& [layer, values] : biases)
      for (std::size_t e = 0; e < values.size(); ++e)
        f.bias.Add({{"layer", std::to_string(layer)}, {"expert", std::to_string(e)}})
            .Set(values[e]);
  f.loss.Add({{"kind", "main"}}).Set(s.loss);
  f.loss.Add({{"kind", "mtp"}}).Set(s.mtp_loss);
  f.loss.Add({{"kind", "balance"}}).Set(s.balance_loss);
  f.tokens_per_second.Add({}).Set(s.tokens_per_s);
  f.learning_rate.Add({}).Set(s.lr);
  f.grad_norm.Add({}).Set(s.grad_norm);
  f.steps.Add({}).Increment();
  f.across_hosts.Add({}).Increment(static_cast<double>(s.tokens_across_hosts));
  f.last_step.Add({}).Set(
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  f.tokens.Add({}).Increment(static_cast<double>(s.tokens));
  f.step_duration
      .Add({}, prometheus::Histogram::BucketBoundaries{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                                       10, 25, 60})
      .Observe(s.step_seconds);
}

void training_metrics::record_stage(const std::string& rank, double busy, double bubble) {
  families_->busy.Add({{"stage", rank}}).Increment(busy);
  families_->bubble.Add({{"stage", rank}}).Increment(bubble);
}

void training_metrics::set_paused(bool paused) {
  families_->paused.Add({}).Set(paused ? 1 : 0);
}

void training_metrics::set_plugin(plugin_kind role, const plugin_library* library,
                                  precision builtin) {
  auto& gauge = plugin_info_[role];
  if (gauge != nullptr) families_->plugin_info.Remove(gauge);
  gauge = &families_->plugin_info.Add(
      {{"role", std::string(name_of(role))},
       {"plugin", library != nullptr ? library->name : std::string("builtin")},
       {"version", library != nullptr ? library->version : std::string(to_string(builtin))},
       {"generation", std::to_string(library != nullptr ? library->generation : 0)}});
  gauge->Set(1);
}

void training_metrics::record_swap(plugin_kind role, bool swapped, double pause_seconds) {
  const std::string r(name_of(role));
  families_->swaps.Add({{"role", r}, {"outcome", swapped ? "swapped" : "failed"}}).Increment();
  if (swapped)
    families_->swap_pause
        .Add({{"role", r}},
             prometheus::Histogram::BucketBoundaries{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5})
        .Observe(pause_seconds);
}

void training_metrics::set_placement(const expert_placement& placement) {
  placement_ = placement;
  if (!per_expert_) return;
  for (const auto& [layer, lists] : placement.layers)
    for (std::size_t shard = 0; shard < lists.size(); ++shard)
      for (const std::int64_t e : lists[shard])
        families_->expert_shard
            .Add({{"layer", std::to_string(layer)}, {"expert", std::to_string(e)}})
            .Set(static_cast<double>(shard));
}

void training_metrics::record_rebalance(bool done, std::int64_t moved, std::int64_t bytes,
                                        double pause_seconds) {
  families_->rebalances.record(!done       ? "failed"
                               : moved > 0 ? "moved"
                                           : "unchanged",
                               moved, bytes, pause_seconds);
}

}  // namespace troupe
