#pragma once

// The messages of the training actors. They stay inside one process for now: tensors in them
// share storage with the sender (nothing is copied), so CAF is told not to expect serializers
// for them (CAF_ALLOW_UNSAFE_MESSAGE_TYPE), and troupe::send refuses to send them to another
// process. The multi-process transport sends descriptors and moves the tensors over UCX.

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/data/token_stream.hpp"
#include "runtime/experts/expert_request.hpp"
#include "runtime/schedule/schedule_plan.hpp"
#include "runtime/train/bias_balancer.hpp"
#include "runtime/train/pipeline_rank.hpp"
#include "runtime/train/process_plugins.hpp"

namespace troupe {

/// Coordinator -> pipeline rank: run one step of the plan.
struct step_order {
  std::int64_t step = 0;
  std::shared_ptr<const schedule_plan> plan;
  std::vector<micro_batch_input> inputs;
  float loss_scale = 1.0f;
};

/// Named tensors: gradients to reduce, a snapshot for the EMA, tensors of a checkpoint.
struct named_tensors {
  std::vector<std::pair<std::string, tensor>> items;
};

/// Holders -> EMA after an optimizer step: trainable weights, and buffers kept as they are.
struct ema_snapshot {
  std::vector<std::pair<std::string, tensor>> weights;
  std::vector<std::pair<std::string, tensor>> buffers;
};

/// A holder's gradients after a step: the norm of what it alone holds, and the gradient tensors
/// of replicated parameters for the coordinator to sum.
struct gradient_report {
  gradient_summary summary;
  named_tensors replicated;
};

/// Coordinator -> holders: the optimizer step after the gradients are reduced.
struct optimizer_order {
  std::int64_t step = 0;  ///< counts from 1
  double learning_rate = 0.0;
  double grad_scale = 1.0;
  bool snapshot = false;  ///< send the EMA a snapshot after the update
};

struct router_biases {
  std::map<std::int64_t, std::vector<float>> values;
};

struct load_report {
  expert_load load;
};

/// Coordinator -> holders: write your part of a checkpoint into `directory`.
struct checkpoint_order {
  std::string directory;
  std::string weights_file;    ///< e.g. "model-00002-of-00004.safetensors"
  std::string optimizer_file;  ///< e.g. "optimizer/stage1.safetensors"
};

/// What a holder wrote: the names of its weights (for model.safetensors.index.json).
struct checkpoint_written {
  std::vector<std::string> weights;
};

/// Data actor -> coordinator: a step's micro-batches and where the stream stands after them.
struct data_batch {
  std::vector<micro_batch_input> inputs;
  data_position after;
};

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::step_order)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::stage_transfer)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::rank_step_report)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gradient_summary)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::named_tensors)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::gradient_report)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::ema_snapshot)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::optimizer_order)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::router_biases)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::load_report)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::checkpoint_order)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::checkpoint_written)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::data_batch)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::plugin_swap_order)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::data_position)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::expert_request)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::expert_reply)
