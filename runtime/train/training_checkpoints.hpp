#pragma once

// A training job's checkpoints: written by every holder of parameters (each its own part, at a
// step boundary), the EMA, the coordinator (config, index, trainer state), and published
// atomically (runtime/checkpoint/training_checkpoint.hpp has the layout); read back into the
// roles' state before they are spawned.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "runtime/actor/blocking_actor.hpp"
#include "runtime/data/token_stream.hpp"
#include "runtime/topology/topology.hpp"
#include "runtime/train/training_roles.hpp"

namespace troupe {

/// Where a run stands: for its checkpoints, the message of a failure and the control
/// endpoint's status. The coordinator updates it after every step.
struct run_standing {
  std::int64_t start_step = 0;      ///< steps done before this run (resume)
  std::int64_t last_completed = 0;  ///< steps done
  std::int64_t total_steps = 0;
  std::int64_t tokens_seen = 0;
  data_position position;  ///< where the data stream stands after the last step
  double last_loss = 0.0;
  double last_tokens_per_s = 0.0;
  std::filesystem::path last_written;  ///< the last checkpoint of this run, or empty
};

class training_checkpoints {
 public:
  /// Checkpoints of `roles` under `root`; `on_event` hears of each one written.
  training_checkpoints(const topology& topo, std::filesystem::path root, training_roles& roles,
                       run_standing& standing, std::function<void(const std::string&)> on_event);

  const std::filesystem::path& root() const { return root_; }

  /// Checks, before step 1, that a checkpoint can be written: the root is (or can be made) a
  /// writable directory with room for one checkpoint of this model. With `tidy`, removes the
  /// `*.partial` directories an interrupted earlier run left behind. Throws checkpoint_error
  /// naming the directory and the cause.
  void prepare(bool tidy);

  /// Writes the checkpoint of the step the run stands at; returns its directory. A write that
  /// fails (a full disk) removes its `.partial` directory before the error goes up.
  std::filesystem::path write(blocking_actor& self);

  /// Loads the checkpoint `from` names (a checkpoint, or a root with `latest`) into the roles'
  /// state before they are spawned: the experts' placement (where a rebalance left them, when it
  /// fits the topology's shards), weights and optimizer moments of this process's holders, the
  /// EMA, the data position and the balancer's router biases (from the weights). Throws
  /// checkpoint_error naming the file and the problem.
  void resume(const std::filesystem::path& from);

  /// Bytes one checkpoint of the model takes, about: f32 weights, bf16 moments, the f32 EMA.
  std::uintmax_t checkpoint_bytes() const;

  /// `failure` with the run's standing: the last completed step and checkpoint.
  std::string with_standing(const std::string& failure) const;

 private:
  const topology& topo_;
  std::filesystem::path root_;
  training_roles& roles_;
  run_standing& standing_;
  std::function<void(const std::string&)> on_event_;

  std::filesystem::path write_partial(blocking_actor& self, const std::filesystem::path& partial);
  void check_ema(const std::filesystem::path& dir, const class hf_checkpoint& weights);
  /// Rebuilds this process's expert shards and re-routes its ranks for `saved` (the
  /// checkpoint's placement); one that does not fit the topology is reported and left out.
  void restore_placement(
      const std::filesystem::path& dir,
      const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& saved);
};

}  // namespace troupe
