#pragma once

// How a pipeline rank's activations and gradients reach the other ranks of its replica: as
// stage_transfer messages to their actors. In one process the tensors' storage is shared, not
// copied; across processes the cluster's gateways send the descriptor through CAF and the tensor
// over UCX.

#include <cstdint>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/stage/stage_messages.hpp"

namespace troupe {

class stage_transport {
 public:
  virtual ~stage_transport() = default;
  /// Hands `transfer` to pipeline rank `to` (of the sender's data-parallel replica); it arrives
  /// through that rank's pipeline_rank::deliver.
  virtual void send(std::int32_t to, stage_transfer transfer) = 0;
};

/// Transfers as messages from the stage actor `self` to its peers (by rank).
class message_stage_transport : public stage_transport {
 public:
  message_stage_transport(event_actor& self, std::vector<actor_ref> peers)
      : self_(self), peers_(std::move(peers)) {}
  void send(std::int32_t to, stage_transfer transfer) override {
    self_.tell(peers_.at(static_cast<std::size_t>(to)), std::move(transfer));
  }

 private:
  event_actor& self_;
  std::vector<actor_ref> peers_;
};

}  // namespace troupe
