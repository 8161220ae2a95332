#include "runtime/train/coordinator.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "runtime/balancer/balancer_messages.hpp"
#include "runtime/job/holder_messages.hpp"
#include "runtime/train/training_control.hpp"

namespace troupe {

namespace {

double seconds_between(std::chrono::steady_clock::time_point a,
                       std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

coordinator::coordinator(const topology& topo, const training_options& options,
                         training_roles& roles, run_standing& standing,
                         training_checkpoints& checkpoints, training_metrics& metrics,
                         training_control* control)
    : topo_(topo),
      options_(options),
      roles_(roles),
      standing_(standing),
      checkpoints_(checkpoints),
      metrics_(metrics),
      control_(control),
      lr_{topo.train.learning_rate, topo.train.min_learning_rate, topo.train.warmup_steps,
          topo.train.steps},
      ramp_(batch_ramp_of(topo)) {}

training_result coordinator::run(blocking_actor& self, const std::atomic<bool>& stop) {
  training_result result;
  result.first_step = result.last_step = standing_.start_step;
  const auto run_start = clock::now();
  standing_.last_loss = 0.0;
  biases_ = self.ask(roles_.balancer, biases_request{}, "balancer").values;
  bool stopped = false;
  for (std::int64_t step = standing_.start_step; step < standing_.total_steps; ++step) {
    boundary(self, stop);
    if (stop.load(std::memory_order_relaxed)) {
      stopped = true;
      break;
    }
    step_record record;
    if (!run_step(self, step, record, result.message)) {
      result.outcome = training_outcome::non_finite;
      break;
    }
    result.last_step = step + 1;
    if (control_) control_->after_step(step + 1, record.load);
    if (options_.on_step) options_.on_step(record);
    if (!result.first) result.first = record;
    result.tokens += record.tokens;
    result.step_seconds += record.step_seconds;
    if (options_.keep_steps) result.steps.push_back(record);
    result.last = std::move(record);
    if (options_.stop_after > 0 && step + 1 >= options_.stop_after) {
      stopped = true;
      break;
    }
    const bool periodic = options_.checkpoints && topo_.train.checkpoint_every > 0 &&
                          (step + 1) % topo_.train.checkpoint_every == 0;
    if (periodic && step + 1 < standing_.total_steps)
      result.last_checkpoint = checkpoints_.write(self);
  }
  // Paused after the last step (--pause-after N with N the last): wait for resume.
  if (!stopped && result.outcome == training_outcome::completed) boundary(self, stop);
  if (stopped) result.outcome = training_outcome::stopped;
  if (options_.checkpoints && result.outcome != training_outcome::non_finite &&
      result.last_step > standing_.start_step && (stopped || options_.checkpoint_at_end))
    result.last_checkpoint = checkpoints_.write(self);
  result.seconds = seconds_between(run_start, clock::now());
  return result;
}

bool coordinator::run_step(blocking_actor& self, std::int64_t step, step_record& record,
                           std::string& failure) {
  const auto start = clock::now();
  auto mark = start;
  const auto lap = [&mark] {
    const auto now = clock::now();
    return seconds_between(std::exchange(mark, now), now);
  };
  const std::int64_t per_replica = ramp_.at(step);
  const std::int64_t micro_batches = per_replica * topo_.data;

  // Data: the global batch.
  data_batch batch = self.ask(roles_.data, batch_request{micro_batches}, "data");
  const double data_seconds = lap();
  // Forward and backward of every micro-batch, on every rank at once.
  const rank_reports ranks = forward_backward(self, step, per_replica, batch, start);
  record = summarize(step, per_replica, ranks, failure);
  record.phases.data = data_seconds;
  record.phases.forward_backward = lap();
  for (const auto& report : ranks.reports)
    record.phases.rank_busy = std::max(record.phases.rank_busy, report.busy_seconds);
  if (!failure.empty()) return false;
  // Reduce, then clip by the global norm.
  const double norm_squared = reduce_gradients(self, step, failure);
  record.phases.gradients = lap();
  if (!failure.empty()) return false;
  record.grad_norm = std::sqrt(norm_squared);
  const double grad_scale = clip_scale(record.grad_norm);
  // The same AdamW step on every holder; EMA snapshots go out asynchronously.
  record.lr = lr_.at(step);
  optimize(self, step, record.lr, grad_scale);
  record.phases.optimizer = lap();
  // The balancer's update, in every stage before the next step.
  balance(self, record.load);
  record.phases.balancer = lap();

  // Metrics.
  const auto end = clock::now();
  standing_.position = batch.after;
  record.tokens = micro_batches * topo_.train.micro_batch_size * topo_.train.sequence_length;
  standing_.tokens_seen += record.tokens;
  record.step_seconds = seconds_between(start, end);
  record.tokens_per_s = static_cast<double>(record.tokens) / record.step_seconds;
  for (std::size_t i = 0; i < roles_.ranks.size(); ++i)
    metrics_.record_stage(roles_.ranks[i].name, ranks.reports[i].busy_seconds,
                          std::max(0.0, ranks.walls[i] - ranks.reports[i].busy_seconds));
  metrics_.record_step(record, biases_);
  standing_.last_loss = record.loss;
  standing_.last_tokens_per_s = record.tokens_per_s;
  standing_.last_completed = step + 1;
  return true;
}

coordinator::rank_reports coordinator::forward_backward(blocking_actor& self, std::int64_t step,
                                                        std::int64_t per_replica, data_batch& batch,
                                                        clock::time_point start) {
  auto& plan = plans_[per_replica];
  if (!plan)
    plan = std::make_shared<const schedule_plan>(
        schedule_plan::build(topo_.schedule.kind, topo_.pipeline, per_replica));
  const float loss_scale = 1.0f / static_cast<float>(per_replica * topo_.data);
  std::map<std::string, std::int32_t> replica_of;
  for (const auto& entry : roles_.ranks) replica_of[entry.name] = entry.replica;
  rank_reports out;
  self.ask_each(
      [step](const std::string& name) { return fmt::format("step {}: {}", step + 1, name); },
      roles_.stages(),
      [&](const std::string& name) {
        step_order order;
        order.step = step;
        order.plan = plan;
        order.loss_scale = loss_scale;
        const auto first = batch.inputs.begin() + replica_of[name] * per_replica;
        order.inputs.assign(first, first + per_replica);
        return order;
      },
      [&](const std::string&, rank_step_report& report) {
        out.reports.push_back(std::move(report));
        out.walls.push_back(seconds_between(start, clock::now()));
      });
  return out;
}

step_record coordinator::summarize(std::int64_t step, std::int64_t per_replica,
                                   const rank_reports& ranks, std::string& failure) const {
  // Losses per micro-batch of the global batch (the head's; balance losses of every stage).
  const std::int64_t micro_batches = per_replica * topo_.data;
  std::vector<double> loss(static_cast<std::size_t>(micro_batches)), mtp(loss.size()),
      balance(loss.size());
  std::vector<std::string> non_finite(loss.size());
  step_record record;
  for (std::size_t i = 0; i < roles_.ranks.size(); ++i) {
    const auto& rank = roles_.ranks[i];
    for (const auto& l : ranks.reports[i].losses) {
      const auto m = static_cast<std::size_t>(rank.replica * per_replica + l.micro_batch);
      if (l.head) {
        loss[m] = l.loss;
        mtp[m] = l.mtp_loss;
      }
      balance[m] += l.balance_loss;
      if (!l.non_finite.empty() && non_finite[m].empty())
        non_finite[m] = fmt::format("{} (stage {})", l.non_finite, rank.rank);
    }
    record.tokens_across_hosts += ranks.reports[i].tokens_across_hosts;
    record.most_hosts_per_token =
        std::max(record.most_hosts_per_token, ranks.reports[i].most_hosts_per_token);
    for (const auto& [layer, counts] : ranks.reports[i].load) {
      auto& total = record.load[layer];
      total.resize(counts.size(), 0);
      for (std::size_t e = 0; e < counts.size(); ++e) total[e] += counts[e];
    }
  }
  record.step = step + 1;
  record.total_steps = standing_.total_steps;
  record.micro_batches = micro_batches;
  for (std::size_t m = 0; m < loss.size(); ++m) {
    record.loss += loss[m] / static_cast<double>(micro_batches);
    record.mtp_loss += mtp[m] / static_cast<double>(micro_batches);
    record.balance_loss += balance[m] / static_cast<double>(micro_batches);
    if (!std::isfinite(loss[m] + mtp[m] + balance[m]) || !non_finite[m].empty()) {
      failure =
          fmt::format("step {}, micro-batch {}: the loss is not finite; first non-finite value: {}",
                      step + 1, m, non_finite[m].empty() ? "the loss itself" : non_finite[m]);
      break;
    }
  }
  for (const auto& [layer, counts] : record.load)
    record.expert_load_max_over_mean =
        std::max(record.expert_load_max_over_mean, max_over_mean(counts));
  return record;
}

double coordinator::reduce_gradients(blocking_actor& self, std::int64_t step,
                                     std::string& failure) {
  // The norm of what each holder alone has, plus the replicated gradients summed here in holder
  // order (deterministic), written back to every holder.
  double norm_squared = 0.0;
  std::string first_non_finite;
  std::map<std::string, std::vector<tensor>> replicated;
  std::vector<std::string> replicated_order;
  std::map<std::string, named_tensor_list> reported;  // by holder: what it sent, in its order
  const named_actors holders = roles_.holders();
  self.ask_each(
      "gradients", holders, [](const std::string&) { return gradients_request{}; },
      [&](const std::string& name, gradient_report& report) {
        norm_squared += report.summary.norm_squared;
        if (first_non_finite.empty() && !report.summary.non_finite.empty())
          first_non_finite = fmt::format("{} (in {})", report.summary.non_finite, name);
        for (auto& [param, grad] : report.replicated) {
          auto& copies = replicated[param];
          if (copies.empty()) replicated_order.push_back(param);
          copies.push_back(grad);
        }
        if (!report.replicated.empty()) reported[name] = std::move(report.replicated);
      });
  for (const auto& param : replicated_order) {
    auto& copies = replicated[param];
    float* sum = copies[0].data_as<float>();
    const std::int64_t n = copies[0].numel();
    for (std::size_t c = 1; c < copies.size(); ++c) {
      const float* g = copies[c].data_as<const float>();
      for (std::int64_t i = 0; i < n; ++i) sum[i] += g[i];
    }
    double squares = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
      squares += static_cast<double>(sum[i]) * static_cast<double>(sum[i]);
    norm_squared += squares;
  }
  if (!first_non_finite.empty() || !std::isfinite(norm_squared)) {
    failure = fmt::format("step {}: the gradient of {} is not finite", step + 1,
                          first_non_finite.empty() ? "the model" : first_non_finite);
    return norm_squared;
  }
  // Every holder of a replicated parameter gets the sum (in one process the first copy is
  // already the sum: holders skip a copy onto itself).
  named_actors reducing;
  for (const auto& [name, actor] : holders) {
    auto it = reported.find(name);
    if (it == reported.end()) continue;
    for (auto& [param, grad] : it->second) grad = replicated[param][0];
    reducing.emplace_back(name, actor);
  }
  self.ask_each(
      "gradient reduction", reducing,
      [&](const std::string& name) { return reduced_gradients{reported[name]}; },
      [](const std::string&, bool&) {});
  return norm_squared;
}

double coordinator::clip_scale(double grad_norm) const {
  const double clip = topo_.train.grad_clip;
  return clip > 0.0 && grad_norm > clip ? clip / (grad_norm + 1e-6) : 1.0;
}

void coordinator::optimize(blocking_actor& self, std::int64_t step, double learning_rate,
                           double grad_scale) {
  const optimizer_order order{step + 1, learning_rate, grad_scale,
                              roles_.ema && (step + 1) % std::max(1, topo_.ema.every) == 0};
  self.ask_each(
      "optimizer step", roles_.holders(), [&](const std::string&) { return order; },
      [](const std::string&, bool&) {});
}

void coordinator::balance(blocking_actor& self, const expert_load& load) {
  if (!topo_.balancer.enabled || load.empty()) return;
  balance_request request{load, {}};
  for (const auto& entry : roles_.ranks) request.holders.push_back(entry.actor);
  biases_ = self.ask(roles_.balancer, std::move(request), "balancer").values;
}

void coordinator::boundary(blocking_actor& self, const std::atomic<bool>& stop) {
  if (control_) control_->at_step_boundary(self, stop);
}

}  // namespace troupe
