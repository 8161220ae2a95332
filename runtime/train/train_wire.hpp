#pragma once

// The wire format of the training messages (train_messages.hpp) between processes: every shape
// the training actors send each other, for the cluster's gateways (runtime/cluster).

#include <memory>

#include "runtime/cluster/message_codec.hpp"

namespace troupe {

/// The codec of every training message; made once.
std::shared_ptr<const message_codec> training_codec();

}  // namespace troupe
