#pragma once

// The EMA updater's messages (ema_actor.hpp).

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime/actor/message.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// Holders -> EMA after an optimizer step: copies of their trainable weights, and buffers (the
/// router biases) kept as they are.
struct ema_snapshot {
  TROUPE_MESSAGE("snapshot");
  std::vector<std::pair<std::string, tensor>> weights;
  std::vector<std::pair<std::string, tensor>> buffers;
  /// How many scheduled updates this snapshot stands for: more than 1 when a GPU holder skipped
  /// snapshots while the EMA was still folding in older ones (the decay is applied that often).
  std::int64_t updates = 1;
  auto fields() { return std::tie(weights, buffers, updates); }
};

/// Coordinator -> EMA: write the averages into `directory` as a Hugging Face model.
struct save_ema {
  TROUPE_REQUEST("save_ema", bool);
  std::string directory;
  auto fields() { return std::tie(directory); }
};

}  // namespace troupe
