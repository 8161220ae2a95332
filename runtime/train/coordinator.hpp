#pragma once

// The coordinator of a training job: the step loop, run as an actor on a thread of its own. One
// step, top to bottom (coordinator.cpp, run_step):
//   data      the data loader cuts the global batch into micro-batches;
//   forward/backward  every pipeline rank runs its ops of the schedule plan (activations and
//             gradients travel between ranks, token rows to the expert shards and back);
//   reduce    the gradients of replicated parameters (DualPipe's two copies, the embedding the
//             first and last stage share, data-parallel replicas) are summed here in a fixed
//             order and handed back, and the global norm counts each parameter once;
//   clip      one scale for every holder when the norm exceeds train.grad_clip;
//   optimizer every holder runs the same AdamW step (and sends the EMA a snapshot);
//   balancer  the router biases move towards balance and reach every stage;
//   metrics   the step's record: the progress line, --log-json, Prometheus.
// Between steps, at the boundary, the control endpoint's work runs (pause, checkpoint, swap).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/actor/blocking_actor.hpp"
#include "runtime/data/data_messages.hpp"
#include "runtime/optim/training_schedule.hpp"
#include "runtime/stage/stage_messages.hpp"
#include "runtime/train/training_checkpoints.hpp"
#include "runtime/train/training_job.hpp"
#include "runtime/train/training_metrics.hpp"
#include "runtime/train/training_roles.hpp"

namespace troupe {

class training_control;

class coordinator {
 public:
  /// `control` may be null (no [control] endpoint).
  coordinator(const topology& topo, const training_options& options, training_roles& roles,
              run_standing& standing, training_checkpoints& checkpoints, training_metrics& metrics,
              training_control* control);

  /// Runs the steps from where the standing is to train.steps; throws troupe::error when an
  /// actor fails.
  training_result run(blocking_actor& self, const std::atomic<bool>& stop);

 private:
  using clock = std::chrono::steady_clock;

  /// What the pipeline ranks reported for one step, and when each was done.
  struct rank_reports {
    std::vector<rank_step_report> reports;
    std::vector<double> walls;  ///< seconds from the step's start to each rank's report
  };

  bool run_step(blocking_actor& self, std::int64_t step, step_record& record, std::string& failure);
  rank_reports forward_backward(blocking_actor& self, std::int64_t step, std::int64_t per_replica,
                                data_batch& batch, clock::time_point start);
  /// The step's losses and expert load; `failure` names the first non-finite loss.
  step_record summarize(std::int64_t step, std::int64_t per_replica, const rank_reports& ranks,
                        std::string& failure) const;
  /// Reduces the replicated gradients; returns the squared global norm (`failure` names a
  /// non-finite gradient).
  double reduce_gradients(blocking_actor& self, std::int64_t step, std::string& failure);
  double clip_scale(double grad_norm) const;
  void optimize(blocking_actor& self, std::int64_t step, double learning_rate, double grad_scale);
  void balance(blocking_actor& self, const expert_load& load);
  void boundary(blocking_actor& self, const std::atomic<bool>& stop);

  const topology& topo_;
  const training_options& options_;
  training_roles& roles_;
  run_standing& standing_;
  training_checkpoints& checkpoints_;
  training_metrics& metrics_;
  training_control* control_;
  lr_schedule lr_;
  batch_ramp ramp_;
  std::map<std::int64_t, std::shared_ptr<const schedule_plan>> plans_;
  std::map<std::int64_t, std::vector<float>> biases_;  // the balancer's, after the last step
};

}  // namespace troupe
