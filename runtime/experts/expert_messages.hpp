#pragma once

// What a stage asks of an expert shard, and what comes back (expert_shard_actor.hpp); and how
// experts move between shards in a rebalance, at a step boundary:
//   coordinator -> each shard that gives experts up: expert_handover_request -> expert_handover
//   coordinator -> every shard that changes: expert_placement_order (builds the new set aside)
//   coordinator -> the same shards: expert_placement_commit (commit or abort; everywhere or
//   nowhere) coordinator -> every pipeline rank: expert_routing_order (where each layer's experts
//   are now)

#include <cstdint>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "runtime/actor/message.hpp"
#include "runtime/experts/expert_payload.hpp"
#include "runtime/job/holder_messages.hpp"

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

/// What a shard gives up: the parameters of its experts and their AdamW moments (copies).
struct expert_handover {
  TROUPE_MESSAGE("expert_handover");
  named_tensor_list values;   ///< "model.layers.L.mlp.experts.E.*", f32
  named_tensor_list moments;  ///< the same names + ".exp_avg" / ".exp_avg_sq", bf16
  auto fields() { return std::tie(values, moments); }
};

struct expert_handover_request {
  TROUPE_REQUEST("expert_handover_request", expert_handover);
  std::vector<std::pair<std::int64_t, std::int64_t>> experts;  ///< (layer, expert) pairs
  auto fields() { return std::tie(experts); }
};

/// The experts a shard owns from the rebalance on, per MoE layer, and those it gains (the
/// handovers of their previous shards). The shard builds its new set beside the old one and
/// answers; nothing changes before expert_placement_commit.
struct expert_placement_order {
  TROUPE_REQUEST("expert_placement_order", bool);
  std::map<std::int64_t, std::vector<std::int64_t>> experts;
  named_tensor_list values;
  named_tensor_list moments;
  auto fields() { return std::tie(experts, values, moments); }
};

/// Puts the prepared set in place (commit) or drops it.
struct expert_placement_commit {
  TROUPE_REQUEST("expert_placement_commit", bool);
  bool commit = true;
  auto fields() { return std::tie(commit); }
};

/// Coordinator -> pipeline ranks: per MoE layer, the experts of each shard from now on.
struct expert_routing_order {
  TROUPE_REQUEST("expert_routing_order", bool);
  std::map<std::int64_t, std::vector<std::vector<std::int64_t>>> layers;
  auto fields() { return std::tie(layers); }
};

}  // namespace troupe
