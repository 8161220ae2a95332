#pragma once

// How a pipeline rank's activations and gradients reach the other ranks of its replica. In one
// process the stage actor sends them as actor messages that share the tensors' storage; across
// processes an implementation sends descriptors through CAF and the tensors over UCX.

#include <cstdint>

#include "runtime/train/pipeline_rank.hpp"

namespace troupe {

class stage_transport {
 public:
  virtual ~stage_transport() = default;
  /// Hands `transfer` to pipeline rank `to` (of the sender's data-parallel replica); it arrives
  /// through that rank's pipeline_rank::deliver.
  virtual void send(std::int32_t to, stage_transfer transfer) = 0;
};

}  // namespace troupe
