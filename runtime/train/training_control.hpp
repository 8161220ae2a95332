#pragma once

// A training job's control endpoint (docs/control.md): `troupe ctl JOB status | pause | resume |
// checkpoint | swap | rebalance`. The endpoint's threads never touch the job: status is a snapshot
// the coordinator publishes after every step and action; the other commands queue work for the
// coordinator (runtime/job/job_control.hpp), which runs it at the next step boundary and
// answers. While paused, the coordinator waits on that queue. Swaps go through
// runtime/job/hot_swap.hpp: everywhere or nowhere; so do rebalances (expert_rebalance.hpp).

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/control/control_server.hpp"
#include "runtime/control/job_directory.hpp"
#include "runtime/job/job_control.hpp"
#include "runtime/job/job_process.hpp"
#include "runtime/train/training_checkpoints.hpp"
#include "runtime/train/training_job.hpp"
#include "runtime/train/training_metrics.hpp"
#include "runtime/train/training_roles.hpp"

namespace troupe {

/// The plugin serving each role (a null gemm: the runtime's built-in GEMM).
using active_plugins = std::map<plugin_kind, std::shared_ptr<const plugin_library>>;

class training_control {
 public:
  /// Claims the job's directory (token, control.json) and starts the endpoint of the topology's
  /// [control] listen.
  training_control(const topology& topo, const training_options& options, job_process& process,
                   training_roles& roles, const run_standing& standing,
                   training_checkpoints& checkpoints, training_metrics& metrics,
                   active_plugins active);
  /// Stops the endpoint (pending requests are answered first) and releases the job's directory.
  ~training_control();

  std::string url() const;
  /// Answers queued and later requests with 503 `why`, then stops the endpoint.
  void stop(const std::string& why);

  /// Coordinator, at a step boundary: runs queued control work; while paused, waits for more
  /// (or a stop).
  void at_step_boundary(blocking_actor& self, const std::atomic<bool>& stop);
  /// Coordinator, after step `step` (1-based), with the step's expert load (what a rebalance
  /// balances): pauses when --pause-after says so; publishes the status.
  void after_step(std::int64_t step, const expert_load& load);

 private:
  control_reply set_paused(bool pause);
  control_reply request_swap(const nlohmann::json& request);
  control_reply rebalance(blocking_actor& self, const layer_expert_load& load);
  /// Swaps `role` for `library`, or (empty) the built-in GEMM in precision `builtin`.
  control_reply swap_plugin(blocking_actor& self, plugin_kind role, const std::string& library,
                            precision builtin);
  void event(const std::string& what) const;
  void publish_status();

  const topology& topo_;
  const training_options& options_;
  job_process& process_;
  training_roles& roles_;
  const run_standing& standing_;
  training_checkpoints& checkpoints_;
  training_metrics& metrics_;
  active_plugins active_;
  /// The built-in GEMM's precision: what a null gemm in active_ computes in.
  precision builtin_gemm_;
  std::int64_t swaps_ordered_ = 0;
  bool paused_ = false;
  nlohmann::json swap_history_ = nlohmann::json::array();
  nlohmann::json rebalance_history_ = nlohmann::json::array();
  layer_expert_load observed_;  ///< tokens per expert since the start or the last rebalance
  std::vector<std::int64_t> moe_layers_;  ///< the placement's layers (none without shards)
  std::unique_ptr<job_control> queue_;
  std::unique_ptr<job_directory> directory_;
  std::unique_ptr<control_server> endpoint_;
};

}  // namespace troupe
