#pragma once

// An exponential moving average of the model's weights, kept on the CPU in FP32 as DeepSeek-V3
// does (the EMA estimates how the model would do after learning-rate decay, without a second
// run):  ema <- decay * ema + (1 - decay) * w  after each snapshot; the first snapshot of a
// tensor starts its average. The update runs on a few threads of its own (a quarter of the
// cores, at most 8; made by the first update, so they share its thread's priority): a GPU step
// of a large model is shorter than one thread's pass over its weights. Elementwise, so the bits
// do not depend on the thread count.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/exec/thread_pool.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

class ema_tracker {
 public:
  explicit ema_tracker(double decay);

  /// Folds a snapshot of some of the model's tensors (f32) into the average. A snapshot may
  /// hold any subset (each actor sends its own tensors); shapes must stay the same.
  /// `buffers` (router biases: state, not weights) are kept as they are, not averaged.
  /// A snapshot standing for `updates` scheduled updates (the holder skipped updates - 1 of them
  /// while this tracker was busy) applies decay^updates: ema <- d^u ema + (1 - d^u) w, exact
  /// when the weights did not move in between, and never slower than the step.
  void update(const std::vector<std::pair<std::string, tensor>>& snapshot,
              const std::vector<std::pair<std::string, tensor>>& buffers = {},
              std::int64_t updates = 1);

  double decay() const { return decay_; }
  /// The averages, sorted by name.
  std::vector<std::pair<std::string, tensor>> weights() const;
  /// Restores averages written by weights() (a checkpoint).
  void load(const std::vector<std::pair<std::string, tensor>>& weights);
  std::int64_t updates() const { return updates_; }

 private:
  double decay_;
  std::unique_ptr<thread_pool> pool_;
  std::map<std::string, tensor> average_;
  std::int64_t updates_ = 0;
};

}  // namespace troupe
