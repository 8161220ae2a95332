#pragma once

// What a stage asks of an expert shard, and what comes back (expert_shard_actor.hpp).

#include <cstdint>
#include <tuple>
#include <vector>

#include "runtime/actor/message.hpp"
#include "runtime/experts/expert_payload.hpp"

namespace troupe {

struct expert_reply {
  TROUPE_MESSAGE("expert_reply");
  encoded_rows rows;  ///< forward: y_rows; backward_input: dL/drows; otherwise empty
  auto fields() { return std::tie(rows); }
};

struct expert_request {
  TROUPE_REQUEST("expert_request", expert_reply);
  enum class kind : std::uint8_t { forward, backward_input, backward_weight, forget };
  kind what = kind::forward;
  /// Which copy of the layer's stage asks (DualPipe runs two copies of every stage, data
  /// parallelism one per replica); each accumulates weight gradients separately.
  std::int32_t source = 0;
  std::int64_t layer = 0;
  std::int64_t micro_batch = 0;
  encoded_rows rows;                 ///< forward: token rows; backward_input: dL/dy_rows
  std::vector<std::int64_t> counts;  ///< forward: rows per owned expert, ascending expert order
  wire_precision reply_precision = wire_precision::f32;
  auto fields() {
    return std::tie(what, source, layer, micro_batch, rows, counts, reply_precision);
  }
};

}  // namespace troupe
