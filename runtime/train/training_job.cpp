#include "runtime/train/training_job.hpp"

#include <future>

#include "runtime/job/holder_messages.hpp"
#include "runtime/job/job_process.hpp"
#include "runtime/train/coordinator.hpp"
#include "runtime/train/training_checkpoints.hpp"
#include "runtime/train/training_control.hpp"
#include "runtime/train/training_metrics.hpp"
#include "runtime/train/training_roles.hpp"

namespace troupe {

namespace fs = std::filesystem;

struct training_job::impl {
  topology topo;
  training_options options;
  // First, so it goes last: its runtime waits for the actors, which use what follows.
  std::unique_ptr<job_process> process;
  training_roles roles;
  run_standing standing;
  std::unique_ptr<training_metrics> metrics;
  std::unique_ptr<training_checkpoints> checkpoints;
  std::unique_ptr<training_control> control;
  std::shared_ptr<std::atomic<bool>> lost = std::make_shared<std::atomic<bool>>(false);
  bool stopped = false;  // the actors were told to exit

  void build(plugin_registry& registry);
  void start_control(const active_plugins& active);
  void event(const std::string& what) const {
    if (options.on_event) options.on_event(what);
  }
  /// The ranks' blocking helpers go before the actor system does, in their own threads. A rank
  /// of a dead process answers at once (its gateway knows).
  void stop_stages(blocking_actor& self) {
    for (const auto& [name, actor] : roles.stages()) {
      try {
        self.ask(actor, stop_request{}, name);
      } catch (const std::exception&) {
      }
    }
  }
};

void training_job::impl::build(plugin_registry& registry) {
  job_process_options settings;
  settings.threads = options.threads;
  settings.cluster = options.cluster;
  settings.metrics = options.metrics;
  settings.gemm = load_gemm_plugin(registry, topo);
  process = std::make_unique<job_process>(topo, registry, settings);
  if (cluster* processes = process->processes())
    processes->on_failure([lost = lost](int, const std::string&) { lost->store(true); });
  const model_plugins plugins = load_model_plugins(registry, topo);
  roles = build_training_roles(topo, *process, plugins);
  if (topo.train.zero == 1)  // what ZeRO-1 saves, as allocated
    for (const auto& entry : roles.ranks)
      if (entry.setup) {
        std::int64_t whole = 0;  // two bf16 moments per trainable element
        for (auto& chunk : entry.setup->rank->chunks())
          whole += 4 * chunk.optimizer->parameter_count();
        event(fmt::format("ZeRO-1: {} keeps {:.2f} MiB of AdamW moments ({:.2f} MiB unsharded)",
                          entry.name, entry.setup->rank->optimizer_bytes() / 1048576.0,
                          whole / 1048576.0));
      }

  standing.total_steps = topo.train.steps;
  checkpoints = std::make_unique<training_checkpoints>(
      topo,
      options.checkpoint_dir.empty() ? fs::path(topo.train.checkpoint_dir) : options.checkpoint_dir,
      roles, standing, [this](const std::string& what) { event(what); });
  // Everything that can fail before step 1 fails here, not after hours of training.
  if (options.checkpoints) checkpoints->prepare(process->coordinates());
  if (!options.resume.empty()) checkpoints->resume(options.resume);
  metrics = std::make_unique<training_metrics>(*process->metrics().registry(),
                                               topo.monitoring.per_expert_series);

  spawn_training_roles(roles, *process, topo);
  if (process->coordinates() && !topo.monitoring.metrics_host.empty())
    process->serve_metrics(topo.monitoring.metrics_host, topo.monitoring.metrics_port);

  active_plugins active{{plugin_kind::gemm, settings.gemm},
                        {plugin_kind::attention, plugins.attention}};
  if (plugins.moe) active[plugin_kind::moe] = plugins.moe;
  if (plugins.mtp) active[plugin_kind::mtp] = plugins.mtp;
  for (const auto& [role, library] : active)
    metrics->set_plugin(role, library.get(), builtin_gemm_precision(topo));
  metrics->set_placement(roles.placement);
  start_control(active);
}

void training_job::impl::start_control(const active_plugins& active) {
  if (!process->coordinates()) return;
  if (topo.control.host.empty()) {
    if (options.pause_after > 0)
      fail(
          "{}: pausing after step {} needs the control endpoint to resume: add [control] listen "
          "= \"127.0.0.1:0\"",
          topo.file.string(), options.pause_after);
    return;
  }
  control = std::make_unique<training_control>(topo, options, *process, roles, standing,
                                               *checkpoints, *metrics, active);
}

training_job::training_job(const topology& topo, plugin_registry& registry,
                           training_options options)
    : impl_(std::make_unique<impl>()) {
  impl_->topo = topo;
  impl_->options = std::move(options);
  try {
    impl_->build(registry);
  } catch (...) {
    shut_down();
    throw;
  }
}

training_job::~training_job() {
  shut_down();
}

void training_job::shut_down() {
  if (impl_->control) impl_->control->stop("the job ended");
  if (!impl_->process || impl_->stopped) return;
  impl_->stopped = true;
  actor_runtime& runtime = impl_->process->runtime();
  for (const auto& actor : {impl_->roles.data, impl_->roles.balancer, impl_->roles.ema})
    runtime.stop(actor);
  for (const auto& [name, actor] : impl_->roles.holders()) runtime.stop(actor);
}

bool training_job::lost_process() const {
  return impl_->lost->load();
}

bool training_job::coordinates() const {
  return impl_->process->coordinates();
}

std::pair<int, std::string> training_job::serve() {
  if (coordinates()) fail("the coordinator's process runs the job with run()");
  auto outcome = impl_->process->processes()->wait_for_finish();
  shut_down();
  return outcome;
}

training_result training_job::run() {
  if (impl_->stopped) fail("a training job runs once");
  if (!coordinates())
    fail("rank {} serves its actors with serve()", impl_->process->processes()->rank());
  std::promise<training_result> done;
  auto outcome = done.get_future();
  impl_->process->runtime().spawn_blocking("coordinator", [this, &done](blocking_actor& self) {
    impl& job = *impl_;
    coordinator steps(job.topo, job.options, job.roles, job.standing, *job.checkpoints,
                      *job.metrics, job.control.get());
    try {
      training_result result = steps.run(self, stop_requested_);
      job.stop_stages(self);
      done.set_value(std::move(result));
    } catch (const error& e) {
      job.stop_stages(self);
      done.set_exception(std::make_exception_ptr(error(job.checkpoints->with_standing(e.what()))));
    } catch (...) {
      job.stop_stages(self);
      done.set_exception(std::current_exception());
    }
  });
  cluster* processes = impl_->process->processes();
  try {
    training_result result = outcome.get();
    if (impl_->control) impl_->control->stop("the job ended");
    if (processes) processes->finish(0, "");
    shut_down();
    return result;
  } catch (const std::exception& e) {
    if (impl_->control) impl_->control->stop(fmt::format("the job failed: {}", e.what()));
    if (processes) processes->finish(1, e.what());
    shut_down();
    throw;
  }
}

std::vector<std::pair<std::string, tensor>> training_job::weights() const {
  std::vector<std::pair<std::string, tensor>> all;
  for (const auto& entry : impl_->roles.ranks)
    if (entry.setup)
      for (auto& w : entry.setup->rank->checkpoint_tensors(entry.setup->owned)) all.push_back(w);
  for (const auto& s : impl_->roles.shards)
    if (s.setup)
      for (auto& w : s.setup->shard->parameters().named_values()) all.push_back(w);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return all;
}

std::string training_job::metrics_url() const {
  return impl_->process ? impl_->process->metrics_url() : std::string();
}

std::string training_job::control_url() const {
  return impl_->control ? impl_->control->url() : std::string();
}

}  // namespace troupe
