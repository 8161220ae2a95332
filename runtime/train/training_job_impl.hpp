#pragma once

// The state of a training job (training_job's pimpl), shared by the files that implement it:
// training_job.cpp (building the actors, the step loop, checkpoints) and
// training_job_control.cpp (the control endpoint: pause, checkpoint, hot swaps).

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <caf/all.hpp>
#include <nlohmann/json.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/message_fence.hpp"
#include "runtime/control/control_server.hpp"
#include "runtime/control/job_directory.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "runtime/optim/training_schedule.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/train/job_control.hpp"
#include "runtime/train/process_plugins.hpp"
#include "runtime/train/training_actors.hpp"
#include "runtime/train/training_job.hpp"
#include "runtime/train/training_metrics.hpp"

namespace troupe {

namespace fs = std::filesystem;

/// Throws troupe::error "CONTEXT: the actor's message" for a failed request.
template <class F>
void raise_failure(caf::blocking_actor* self, const caf::error& e, F&& context) {
  throw error(fmt::format("{}: {}", context(), describe_failure(self->system(), e)));
}

struct training_job::impl {
  topology topo;
  training_options options;
  std::int64_t total_steps = 0;
  std::int64_t start_step = 0;
  fs::path checkpoint_root;

  plugin_registry* plugin_loader = nullptr;  // loads the libraries of hot swaps
  std::unique_ptr<thread_pool> pool;
  // This process's side of hot swaps; owns the GEMM plugin's instance the context uses.
  std::unique_ptr<exec_context> context;
  std::shared_ptr<process_plugins> plugins_here;
  std::int64_t swaps_ordered = 0;
  model_plugins plugins;
  std::shared_ptr<metrics_registry> metrics;
  std::unique_ptr<metrics_endpoint> endpoint;
  std::unique_ptr<training_metrics> train_metrics;
  // Declared after what actors use, so the actors stop (the runtime's destructor waits for
  // them) before the pool and the context go.
  std::unique_ptr<actor_runtime> runtime;
  // The other processes of a multi-process job (after the runtime: it goes first).
  std::unique_ptr<cluster> processes;
  std::map<std::string, int> rank_of;  // actor name -> process rank

  lr_schedule lr;
  batch_ramp ramp;
  std::map<std::int64_t, std::shared_ptr<const schedule_plan>> plans;

  // Actors and, for reading weights after the run, the state they were built with.
  struct rank_entry {
    std::string name;
    std::int32_t replica = 0, rank = 0;
    caf::actor actor;
    std::shared_ptr<stage_actor_setup> setup;
  };
  struct shard_entry {
    std::string name;
    caf::actor actor;
    std::shared_ptr<shard_actor_setup> setup;
  };
  std::vector<rank_entry> ranks;
  std::vector<shard_entry> shards;
  caf::actor data, balancer, ema;
  std::shared_ptr<bias_balancer> balancer_state;
  std::shared_ptr<data_actor_setup> data_state;
  std::shared_ptr<ema_actor_setup> ema_state;
  std::int64_t tokens_seen = 0;
  data_position position;
  bool stopped = false;  // the actors were told to exit
  std::shared_ptr<std::atomic<bool>> lost = std::make_shared<std::atomic<bool>>(false);
  // Where the run stands, for the message of a failure and the control endpoint's status.
  std::int64_t last_completed = 0;
  fs::path last_written;
  double last_loss = 0.0, last_tokens_per_s = 0.0;

  // The control endpoint (coordinator only): requests queue for the step loop in `control`.
  // The plugin serving each role after build() (a null gemm: the built-in FP32; `plugins` is
  // only what the actors were built with), paused state and swaps are
  // the coordinator's; the endpoint's threads read them through the published status.
  std::map<plugin_kind, std::shared_ptr<const plugin_library>> active;
  std::unique_ptr<job_control> control;
  std::unique_ptr<job_directory> job_dir;
  std::unique_ptr<control_server> control_endpoint;
  bool paused = false;
  nlohmann::json swap_history = nlohmann::json::array();

  /// `failure` with the run's standing: the last completed step and checkpoint.
  std::string with_standing(const std::string& failure) const {
    return fmt::format("{}\nthe last completed step is {}; {}", failure, last_completed,
                       last_written.empty()
                           ? std::string("no checkpoint was written in this run")
                           : fmt::format("the last checkpoint is {} (continue with --resume {})",
                                         last_written.string(), checkpoint_root.string()));
  }

  /// Whether actor `name` runs in this process.
  bool is_local(const std::string& name) const {
    return !processes || rank_of.at(name) == processes->rank();
  }
  bool coordinates() const { return !processes || processes->rank() == 0; }

  /// Spawns actor `name` here (and makes it reachable from the other processes), or returns
  /// this process's proxy for it.
  template <class Spawn>
  caf::actor place(const std::string& name, Spawn spawn_here) {
    if (!is_local(name)) return processes->remote(name, rank_of.at(name));
    caf::actor actor = spawn_here();
    if (processes) processes->expose(name, actor);
    return actor;
  }

  std::shared_ptr<const schedule_plan> plan_for(std::int64_t micro_batches) {
    auto& plan = plans[micro_batches];
    if (!plan)
      plan = std::make_shared<const schedule_plan>(
          schedule_plan::build(topo.schedule.kind, topo.pipeline, micro_batches));
    return plan;
  }

  void event(const std::string& what) const {
    if (options.on_event) options.on_event(what);
  }

  /// Ranks then shards, by name: everyone holding parameters.
  std::vector<std::pair<std::string, caf::actor>> holder_actors() const {
    std::vector<std::pair<std::string, caf::actor>> all;
    for (const auto& entry : ranks) all.emplace_back(entry.name, entry.actor);
    for (const auto& s : shards) all.emplace_back(s.name, s.actor);
    return all;
  }

  /// Asks every holder the same at once (they work in parallel); `on_reply` sees the replies in
  /// holder order. A failure throws, naming `what` and the holder.
  template <class Reply, class... Ts>
  void ask_holders(caf::blocking_actor* self, const std::string& what,
                   const std::function<void(const std::string&, Reply&)>& on_reply,
                   const Ts&... message) {
    const caf::message content = caf::make_message(message...);
    ask_each<Reply>(self, what, holder_actors(), on_reply,
                    [&](const std::string&) { return content; });
  }

  /// Asks each of `actors` its own `message_for(name)` at once; replies in `actors` order.
  template <class Reply>
  void ask_each(caf::blocking_actor* self, const std::string& what,
                const std::vector<std::pair<std::string, caf::actor>>& actors,
                const std::function<void(const std::string&, Reply&)>& on_reply,
                const std::function<caf::message(const std::string&)>& message_for) {
    using handle = decltype(self->request(caf::actor{}, caf::infinite, caf::message{}));
    std::vector<handle> pending;
    for (const auto& [name, actor] : actors)
      pending.push_back(self->request(actor, caf::infinite, message_for(name)));
    for (std::size_t i = 0; i < pending.size(); ++i)
      pending[i].receive(
          [&](Reply& reply) {
            observe_writes(self);
            on_reply(actors[i].first, reply);
          },
          [&](caf::error& e) {
            raise_failure(self, e, [&] { return what + " of " + actors[i].first; });
          });
  }

  void build(plugin_registry& registry);
  // training_job_control.cpp
  void start_control();
  void stop_control(const std::string& why);
  /// At a step boundary: runs queued control work; while paused, waits for more (or a stop).
  void at_step_boundary(caf::blocking_actor* self, const std::atomic<bool>& stop);
  /// After step `step` (1-based): pauses when the options say so.
  void after_step(std::int64_t step);
  /// Swaps the plugin of `role` for the library at `library_path` (empty: the built-in FP32
  /// GEMM) at a step boundary, everywhere or nowhere.
  control_reply swap_plugin(caf::blocking_actor* self, plugin_kind role,
                            const std::string& library_path);
  control_reply request_swap(const nlohmann::json& request);
  void publish_status();
  void build_data();
  void resume();
  training_result coordinate(caf::blocking_actor* self, const std::atomic<bool>& stop);
  fs::path write_checkpoint(caf::blocking_actor* self, std::int64_t step, double loss);
};

}  // namespace troupe
