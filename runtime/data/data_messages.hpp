#pragma once

// The data loader's messages (data_actor.hpp).

#include <cstdint>
#include <tuple>
#include <vector>

#include "runtime/actor/message.hpp"
#include "runtime/data/micro_batch.hpp"
#include "runtime/data/token_stream.hpp"

namespace troupe {

/// A step's micro-batches and where the stream stands after them.
struct data_batch {
  TROUPE_MESSAGE("data_batch");
  std::vector<micro_batch_input> inputs;
  data_position after;
  auto fields() { return std::tie(inputs, after); }
};

/// Coordinator -> data loader: the next `micro_batches` micro-batches of the stream.
struct batch_request {
  TROUPE_REQUEST("batch", data_batch);
  std::int64_t micro_batches = 0;
  auto fields() { return std::tie(micro_batches); }
};

}  // namespace troupe
