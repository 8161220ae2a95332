#pragma once

// A training job on actors, in one process: the coordinator (this class's step loop, run as a
// detached actor), one actor per pipeline rank (per data-parallel replica), the expert shards,
// the bias balancer, the EMA updater and the data loader, built from a validated topology.
//
// One step: the data loader cuts the global batch into micro-batches; every pipeline rank runs
// its ops of the schedule plan (activations and gradients travel between ranks as messages,
// routed-expert rows to the shards and back); the coordinator sums the gradients of replicated
// parameters (DualPipe's two copies, the embedding the first and last stage share, data-parallel
// replicas) in a fixed order, takes the global gradient norm counting each parameter once,
// clips, and has every holder run the same AdamW step; the balancer updates the router biases
// from the step's expert load and pushes them to the stages; holders send EMA snapshots.

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/balancer/bias_balancer.hpp"
#include "runtime/cluster/cluster.hpp"
#include "runtime/metrics/metrics.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/tensor/tensor.hpp"
#include "runtime/topology/topology.hpp"

namespace troupe {

/// What one step did (the progress line, --log-json, the metrics).
struct step_record {
  std::int64_t step = 0;  ///< 1-based: optimizer steps done after this one
  std::int64_t total_steps = 0;
  std::int64_t micro_batches = 0;
  std::int64_t tokens = 0;
  double loss = 0.0;
  double mtp_loss = 0.0;
  double balance_loss = 0.0;
  double lr = 0.0;
  double grad_norm = 0.0;
  double step_seconds = 0.0;
  double tokens_per_s = 0.0;
  /// Where the step's wall time went, as the coordinator saw it (seconds): the batch from the
  /// data loader, every rank's forward and backward, the gradient norm (and the replicated
  /// gradients' sum), the optimizer step, the balancer's update; and the longest time a rank
  /// spent running its forward and backward ops (the rest of forward_backward is messaging).
  struct phase_seconds {
    double data = 0.0, forward_backward = 0.0, gradients = 0.0, optimizer = 0.0, balancer = 0.0;
    double rank_busy = 0.0;
  } phases;
  expert_load load;                        ///< tokens per expert of each MoE layer
  double expert_load_max_over_mean = 0.0;  ///< of the most unbalanced layer
  /// (token, host) pairs sent to expert shards on another host than the stage's, over every
  /// MoE layer and micro-batch; and the most hosts one token's experts lay on (0: every
  /// stage computes its own experts, or none is on a host of expert shards).
  std::int64_t tokens_across_hosts = 0;
  std::int64_t most_hosts_per_token = 0;
};

enum class training_outcome {
  completed,   ///< ran every step
  stopped,     ///< a stop request (a signal) or stop_after; checkpointed
  non_finite,  ///< a loss or gradient went non-finite; nothing updated or written
};

struct training_result {
  training_outcome outcome = training_outcome::completed;
  std::int64_t first_step = 0;  ///< steps done before this run (resume)
  std::int64_t last_step = 0;   ///< steps done at the end
  std::filesystem::path last_checkpoint;
  std::string message;                     ///< for non_finite: what went non-finite, where
  std::optional<step_record> first, last;  ///< this run's first and last step, if it ran any
  std::int64_t tokens = 0;                 ///< trained by this run
  double step_seconds = 0.0;               ///< the sum of this run's step times
  /// Every step's record, with training_options::keep_steps only: a long run keeps what it
  /// reports (on_step) and the summary above, not a record (with its expert load) per step.
  std::vector<step_record> steps;
  double seconds = 0.0;
};

struct training_options {
  std::filesystem::path checkpoint_dir;  ///< empty: the topology's train.checkpoint_dir
  std::filesystem::path resume;          ///< a checkpoint, or a checkpoint root with `latest`
  std::int64_t stop_after = 0;           ///< stop (and checkpoint) after this step; 0: never
  bool checkpoint_at_end = true;
  /// false: no checkpoint at all, periodic, final or on a signal, and no check of the disk before
  /// step 1 (benchmarks, and models whose checkpoint does not fit the disk).
  bool checkpoints = true;
  bool keep_steps = false;  ///< keep every step_record in training_result::steps (tests, benches)
  int threads = 0;          ///< worker pool size; 0: one per core
  std::function<void(const step_record&)> on_step;
  /// Notable events (resume, checkpoints, control requests). Called from the coordinator and,
  /// for refused control requests, from the control endpoint's threads: it must be thread-safe.
  std::function<void(const std::string&)> on_event;
  /// Where metrics go (and what the topology's endpoint serves); null: the job's own.
  std::shared_ptr<metrics_registry> metrics;
  /// This process's place in a multi-process job (troupe launch): it builds and runs only the
  /// actors of its host, and reaches the others through the cluster. Empty: every actor of the
  /// topology runs in this process, whatever its hosts.
  std::optional<cluster_options> cluster;
  /// The control endpoint's job name, for `troupe ctl NAME` (when the topology has [control]);
  /// empty: the topology's name, or NAME-2, ... when a running job has it.
  std::string job_name;
  /// Where the job's token and control.json go; empty: default_run_directory().
  std::filesystem::path run_directory;
  /// Pause after this step until `troupe ctl NAME resume`; 0: never. Needs [control].
  std::int64_t pause_after = 0;
};

class training_job {
 public:
  /// Builds every actor's state (and loads `options.resume`). Throws troupe::error (or
  /// checkpoint_error) naming what is wrong.
  training_job(const topology& topo, plugin_registry& registry, training_options options);
  ~training_job();
  training_job(const training_job&) = delete;
  training_job& operator=(const training_job&) = delete;

  /// Runs the steps (the process that coordinates); throws troupe::error when an actor fails,
  /// naming it, its host and the last completed step. In a multi-process job the other
  /// processes are told to leave when it returns.
  training_result run();
  /// Whether this process runs the coordinator: single-process jobs and rank 0.
  bool coordinates() const;
  /// The other ranks of a multi-process job: serve this process's actors until rank 0 ends the
  /// job or fails; returns rank 0's code (0: done) and message.
  std::pair<int, std::string> serve();
  /// Whether another process of the job died or stopped answering.
  bool lost_process() const;
  /// Asks the job to stop after the step in progress (and checkpoint). Async-signal-safe.
  void request_stop() { stop_requested_.store(true, std::memory_order_relaxed); }

  /// The model's weights under their checkpoint names (after run(): the trained ones).
  std::vector<std::pair<std::string, tensor>> weights() const;
  /// The metrics endpoint's URL, or "" when the topology has none.
  std::string metrics_url() const;
  /// The control endpoint's URL, or "" when the topology has none.
  std::string control_url() const;

 private:
  void shut_down();

  struct impl;
  std::unique_ptr<impl> impl_;
  std::atomic<bool> stop_requested_{false};
};

}  // namespace troupe
