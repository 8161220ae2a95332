// The run of a training job for `troupe train` and `troupe launch`.

#include "tools/troupe/training_run.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/topology/machine_check.hpp"
#include "runtime/topology/plan.hpp"
#include "runtime/train/training_job.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/topology_input.hpp"

namespace troupe::cli {

namespace {
// The job a SIGINT or SIGTERM asks to stop. The handler only stores into lock-free atomics.
std::atomic<training_job*> running_job{nullptr};
std::atomic<int> stop_signals{0};

// NOTES: the first SIGINT or SIGTERM stops the job after the current step and its checkpoint.
// A second one does not abandon that checkpoint (a launcher or a user repeating the signal
// would otherwise lose the run's work); it says so, and only a third one ends the process the
// default way, checkpoint or not.
extern "C" void on_stop_signal(int signal) {
  const int count = stop_signals.fetch_add(1) + 1;
  if (training_job* job = running_job.load()) job->request_stop();
  if (count == 2) {
    static const char note[] =
        "troupe: already stopping: finishing the step and writing its checkpoint; a third signal "
        "abandons them\n";
    [[maybe_unused]] auto written = ::write(STDERR_FILENO, note, sizeof note - 1);
  } else if (count >= 3) {
    std::signal(signal, SIG_DFL);
    std::raise(signal);
  }
}

// Set when the --log-json file refused a line: the job stops (with its checkpoint) and the
// command fails, instead of training on with its log lost.
std::atomic<int> log_errno{0};

nlohmann::json to_json(const step_record& r) {
  nlohmann::json load = nlohmann::json::object();
  for (const auto& [layer, counts] : r.load) load[std::to_string(layer)] = counts;
  return {{"step", r.step},
          {"loss", r.loss},
          {"mtp_loss", r.mtp_loss},
          {"balance_loss", r.balance_loss},
          {"lr", r.lr},
          {"tokens_per_s", r.tokens_per_s},
          {"expert_load_max_over_mean", r.expert_load_max_over_mean},
          {"grad_norm", r.grad_norm},
          {"step_seconds", r.step_seconds},
          {"tokens", r.tokens},
          {"micro_batches", r.micro_batches},
          {"tokens_across_hosts", r.tokens_across_hosts},
          {"most_hosts_per_token", r.most_hosts_per_token},
          {"expert_load", load}};
}

std::string progress_line(const step_record& r) {
  return fmt::format(
      "step {:>{}}/{}  loss {:.4f}  mtp {:.4f}  lr {:.2e}  {:>8.0f} tok/s  load max/mean {:.2f}  "
      "{:.2f} s",
      r.step, std::to_string(r.total_steps).size(), r.total_steps, r.loss, r.mtp_loss, r.lr,
      r.tokens_per_s, r.expert_load_max_over_mean, r.step_seconds);
}

/// After a lost process, tearing down the job may wait on actors that wait on the dead: give
/// it a few seconds, then leave anyway (checkpoints are complete or never published).
void leave_within(std::chrono::seconds grace, int code) {
  std::thread([grace, code] {
    std::this_thread::sleep_for(grace);
    std::fflush(stderr);
    std::_Exit(code);
  }).detach();
}

/// Another rank's part: serve the actors until rank 0 ends the job.
int serve(training_job& job, const std::string& command) {
  // Signals are rank 0's to act on (it checkpoints and tells everyone); a launcher that signals
  // every process (Slurm, a terminal) must not kill the others first.
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  std::signal(SIGHUP, SIG_IGN);
  std::signal(SIGQUIT, SIG_DFL);  // UCX installs its own; a quit means quit, with a core
  auto [code, why] = job.serve();
  if (code == 0) return exit_ok;
  fmt::print(stderr, "{}: the job ended: {}\n", command, why);
  leave_within(std::chrono::seconds(2), exit_process_failed);
  return exit_process_failed;
}

/// Opens the --log-json file (appended to when resuming); false, after a message, if it cannot.
bool open_step_log(const train_options& options, std::ofstream& log) {
  log.open(options.log_json, options.resume.empty() ? std::ios::trunc : std::ios::app);
  if (log) return true;
  fmt::print(stderr, "--log-json: cannot write {}\n", options.log_json);
  return false;
}

/// The job's options from the command's, reporting events and steps under `command`.
training_options job_options_for(const train_options& options, const std::string& command,
                                 const std::optional<cluster_options>& cluster,
                                 std::ofstream& log) {
  training_options job_options;
  job_options.checkpoint_dir = options.checkpoint_dir;
  job_options.resume = options.resume;
  job_options.checkpoints = !options.no_checkpoint;
  job_options.threads = options.threads;
  job_options.cluster = cluster;
  job_options.job_name = options.job;
  job_options.pause_after = options.pause_after;
  job_options.on_event = [&command](const std::string& what) {
    fmt::print(stderr, "{}: {}\n", command, what);
  };
  // The time to the first step (building the roles, drawing or loading the parameters, the first
  // step itself), reported once.
  job_options.on_step = [&options, &log, &command, start = std::chrono::steady_clock::now(),
                         first = true](const step_record& r) mutable {
    if (first && !options.quiet)
      fmt::print(stderr, "{}: first step done {:.2f} s after the start\n", command,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    first = false;
    if (!options.quiet) fmt::print(stderr, "{}\n", progress_line(r));
    if (log.is_open() && log_errno.load() == 0) {
      errno = 0;
      log << to_json(r).dump() << "\n";
      log.flush();
      if (!log) {
        log_errno.store(errno != 0 ? errno : EIO);
        if (training_job* job = running_job.load()) job->request_stop();
      }
    }
  };
  return job_options;
}

/// The line that describes the job before it starts.
void print_job_description(const std::string& command, const std::string& file,
                           const topology& topo) {
  fmt::print(stderr,
             "{}: {} ({} layers, {} routed experts; pipeline {}, expert {}, data {}, {} "
             "schedule, {} micro-batches of {}x{} tokens)\n",
             command, file, topo.model.num_hidden_layers, topo.model.n_routed_experts,
             topo.pipeline, topo.expert, topo.data, to_string(topo.schedule.kind),
             topo.schedule.micro_batches, topo.train.micro_batch_size, topo.train.sequence_length);
}

/// Runs the coordinating process's job, a SIGINT or SIGTERM asking it to stop meanwhile.
training_result run_until_signalled(training_job& job) {
  running_job.store(&job);
  // NOTES: installed after the job is built, so after UCX, which takes SIGHUP for its debug
  // handler (UCX_DEBUG_SIGNO) and would swallow it: a hangup stops the job like SIGTERM does.
  for (int signal : {SIGINT, SIGTERM, SIGHUP}) std::signal(signal, on_stop_signal);
  std::signal(SIGQUIT, SIG_DFL);
  training_result result = job.run();
  running_job.store(nullptr);
  // NOTES: the handler stays until the process ends: a signal that arrives while the stopped job
  // is torn down (after its checkpoint) is the "second signal" above, not a kill by the default
  // action that would turn exit 3 into "killed by SIGTERM".
  return result;
}

/// The summary line of a run's steps: its losses from first to last step, and its throughput.
void print_steps_summary(const std::string& command, const training_result& result) {
  const double tokens = static_cast<double>(result.tokens), seconds = result.step_seconds;
  fmt::print(stderr,
             "{}: steps {}-{} in {:.1f} s: loss {:.4f} -> {:.4f}, mtp {:.4f} -> {:.4f}, "
             "{:.0f} tok/s, expert load max/mean {:.2f}\n",
             command, result.first_step + 1, result.last_step, result.seconds, result.first->loss,
             result.last->loss, result.first->mtp_loss, result.last->mtp_loss, tokens / seconds,
             result.last->expert_load_max_over_mean);
}

/// Reports how a run ended (its last checkpoint, why it stopped) and returns its exit code.
int report_outcome(const std::string& command, const training_result& result,
                   const train_options& options) {
  if (!result.last_checkpoint.empty())
    fmt::print(stderr, "{}: last checkpoint {}\n", command, result.last_checkpoint.string());
  if (const int e = log_errno.load(); e != 0) {
    fmt::print(stderr, "{}: --log-json: cannot write {}: {}; stopped after step {}\n", command,
               options.log_json, std::strerror(e), result.last_step);
    return exit_bad_input;
  }
  switch (result.outcome) {
    case training_outcome::completed:
      return exit_ok;
    case training_outcome::stopped:
      fmt::print(stderr, "{}: stopped by a signal after step {}\n", command, result.last_step);
      return exit_stopped;
    case training_outcome::non_finite:
      fmt::print(stderr,
                 "{}: stopped: {}. Nothing of this step was applied; the last good checkpoint "
                 "is untouched.\n",
                 command, result.message);
      return exit_non_finite;
  }
  return exit_bad_input;
}

/// Reports the error that ended the job and returns the exit code; after a lost process, the
/// process leaves within two seconds.
int report_failure(const std::string& command, const std::exception& e, bool lost) {
  fmt::print(stderr, "{}: {}\n", command, e.what());
  if (!lost) return exit_bad_input;
  leave_within(std::chrono::seconds(2), exit_process_failed);
  return exit_process_failed;
}

}  // namespace

void add_training_options(CLI::App* command, train_options& options) {
  command->add_option("TOPOLOGY", options.file,
                      "Topology file (TOML); default: tiny.toml from the install or source tree");
  command
      ->add_option("--steps", options.steps,
                   "Total optimizer steps (overrides train.steps; a resumed run continues to "
                   "this step)")
      ->check(within({1, std::int64_t{1} << 40}));
  command->add_option("--log-json", options.log_json,
                      "Write one JSON object per step to FILE (appended to when resuming)");
  command->add_option("--checkpoint-dir", options.checkpoint_dir,
                      "Where checkpoints go (default: the topology's train.checkpoint_dir)");
  command->add_flag("--no-checkpoint", options.no_checkpoint,
                    "Write no checkpoint (periodic, final or on a signal) and skip the check of "
                    "the disk before step 1");
  command->add_option("--resume", options.resume,
                      "Continue from a checkpoint directory, or from the `latest` one of a "
                      "checkpoint root");
  command
      ->add_option("--set", options.overrides,
                   "Override a topology key, KEY=VALUE (e.g. parallel.pipeline=2); repeatable")
      ->allow_extra_args(false);
  command
      ->add_option("--threads", options.threads,
                   "Worker threads for compute (default: one per core)")
      ->check(within(thread_bounds));
  command->add_flag("--quiet", options.quiet, "No progress line per step (the summary stays)");
  command->add_option("--job", options.job,
                      "Name for `troupe ctl NAME` (default: the topology's name; with a running "
                      "job of that name, NAME-2, ...)");
  command
      ->add_option("--pause-after", options.pause_after,
                   "Pause after step N until `troupe ctl JOB resume` (needs [control])")
      ->check(CLI::PositiveNumber);
}

int run_training(const train_options& options, const std::string& command,
                 std::optional<cluster_options> cluster) {
  plugin_registry registry;
  const std::string file = topology_or_default(options.file);
  std::vector<std::string> overrides = options.overrides;
  if (options.steps > 0) overrides.push_back(fmt::format("train.steps={}", options.steps));
  auto loaded = load_for_command(file, registry, overrides);
  if (!loaded) return exit_bad_input;
  const bool reports = !cluster || cluster->rank == 0;
  {
    // Every placement this process runs must be one this machine honours, checked before any
    // work starts (a single process runs the placements of every host).
    std::vector<std::string> hosts;
    if (cluster) {
      const auto plan = plan_topology(loaded->topo);
      if (cluster->rank >= 0 && static_cast<std::size_t>(cluster->rank) < plan.processes.size())
        hosts.push_back(plan.processes[static_cast<std::size_t>(cluster->rank)].host);
    }
    const auto problems =
        check_devices(loaded->topo, machine_devices::here(), hosts, /*for_training=*/true);
    if (!problems.empty()) {
      fmt::print(stderr, "{}\n", format_diagnostics(problems));
      return exit_bad_input;
    }
  }

  std::ofstream log;
  if (reports && !options.log_json.empty() && !open_step_log(options, log)) return exit_bad_input;
  training_options job_options = job_options_for(options, command, cluster, log);
  std::unique_ptr<training_job> job;
  try {
    const topology& topo = loaded->topo;
    if (reports) print_job_description(command, file, topo);
    job = std::make_unique<training_job>(topo, registry, job_options);
    if (!job->coordinates()) return serve(*job, command);

    const training_result result = run_until_signalled(*job);
    if (result.last) print_steps_summary(command, result);
    return report_outcome(command, result, options);
  } catch (const rendezvous_error& e) {
    running_job.store(nullptr);
    return report_failure(command, e, true);
  } catch (const std::exception& e) {
    running_job.store(nullptr);
    return report_failure(command, e, job && job->lost_process());
  }
}

}  // namespace troupe::cli
