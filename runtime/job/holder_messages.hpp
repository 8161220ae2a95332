#pragma once

// What a job asks of every actor that holds parameters (pipeline stages, expert shards), at a
// step boundary: its gradients, the sums of the replicated ones, the optimizer step, its part of
// a checkpoint, and to stop. Hot swaps have their own (hot_swap.hpp).

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime/actor/message.hpp"
#include "runtime/optim/gradient_norm.hpp"

namespace troupe {

/// Tensors by name, in the sender's order.
using named_tensor_list = std::vector<std::pair<std::string, tensor>>;

/// A holder's gradients after a step: the norm of what it alone holds, and the gradient tensors
/// of replicated parameters for the coordinator to sum.
struct gradient_report {
  TROUPE_MESSAGE("gradient_report");
  gradient_summary summary;
  named_tensor_list replicated;
  auto fields() { return std::tie(summary, replicated); }
};

struct gradients_request {
  TROUPE_REQUEST("gradients", gradient_report);
  auto fields() { return std::tie(); }
};

/// Coordinator -> holder: the sums of the replicated gradients, in the order the holder reported
/// them. Within one process the first holder's gradient is already the sum: it skips the copy.
struct reduced_gradients {
  TROUPE_REQUEST("reduced", bool);
  named_tensor_list sums;
  auto fields() { return std::tie(sums); }
};

/// Coordinator -> holders: the optimizer step after the gradients are reduced.
struct optimizer_order {
  TROUPE_REQUEST("optimize", bool);
  std::int64_t step = 0;  ///< counts from 1
  double learning_rate = 0.0;
  double grad_scale = 1.0;
  bool snapshot = false;  ///< send the EMA a snapshot after the update
  auto fields() { return std::tie(step, learning_rate, grad_scale, snapshot); }
};

/// ZeRO-1, pipeline rank -> pipeline rank (runtime/optim/zero_sharding.hpp): the sender's
/// gradient pieces of the ranges the receiver keeps (reduce-scatter, while both answer a
/// gradients_request), or the sender's updated ranges (all-gather, while both answer an
/// optimizer_order).
struct zero_exchange {
  TROUPE_MESSAGE("zero_exchange");
  std::int64_t round = 0;   ///< the job's exchanges of this kind before this one
  bool values = false;      ///< all-gather; false: reduce-scatter
  std::int64_t bucket = 0;  ///< which of the exchange's buckets
  std::int32_t from = 0;    ///< the sending rank's index in the job
  named_tensor_list pieces;
  std::string failure;  ///< the sender's exchange failed (why): every exchange fails from now on
  auto fields() { return std::tie(round, values, bucket, from, pieces, failure); }
};

/// Job -> pipeline rank, once before the first step under ZeRO-1: every rank's actor, by its
/// index in the job.
struct zero_peers {
  TROUPE_MESSAGE("zero_peers");
  std::vector<actor_ref> ranks;
  auto fields() { return std::tie(ranks); }
};

/// What a holder wrote: the names of its weights (for model.safetensors.index.json).
struct checkpoint_written {
  TROUPE_MESSAGE("checkpoint_written");
  std::vector<std::string> weights;
  auto fields() { return std::tie(weights); }
};

/// Coordinator -> holders: write your part of a checkpoint into `directory`.
struct checkpoint_order {
  TROUPE_REQUEST("save", checkpoint_written);
  std::string directory;
  std::string weights_file;    ///< e.g. "model-00002-of-00004.safetensors"
  std::string optimizer_file;  ///< e.g. "optimizer/stage1.safetensors"
  auto fields() { return std::tie(directory, weights_file, optimizer_file); }
};

/// Coordinator -> holders when the job ends: let go of what must go in the holder's own thread.
struct stop_request {
  TROUPE_REQUEST("stop", bool);
  auto fields() { return std::tie(); }
};

}  // namespace troupe
