#pragma once

// Experts moving between shards in a rebalance (expert_messages.hpp has the protocol): what a
// shard hands over, and its successor built for the new set. Each expert's weights and AdamW
// moments travel with it, so training goes on as if nothing had moved; gradients are zero at a
// step boundary and start over in the successor. A serving shard has no optimizer: its experts
// move with their weights alone.

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "runtime/experts/expert_messages.hpp"
#include "runtime/experts/expert_shard.hpp"
#include "runtime/optim/adamw.hpp"

namespace troupe {

/// Copies of the weights and moments of `experts` ((layer, expert) pairs) that `shard` owns (no
/// moments without an optimizer); throws troupe::error naming one it does not own.
expert_handover hand_over(expert_shard& shard, const adamw* optimizer,
                          const std::vector<std::pair<std::int64_t, std::int64_t>>& experts);

/// A shard and its optimizer (none for a serving shard) for another set of experts.
struct shard_successor {
  std::unique_ptr<expert_shard> shard;
  std::unique_ptr<adamw> optimizer;
};

/// Builds an expert shard for `experts` (per MoE layer) from `current`'s setting.
using shard_factory = std::function<std::unique_ptr<expert_shard>(
    std::shared_ptr<const plugin_library> moe,
    const std::map<std::int64_t, std::vector<std::int64_t>>& experts)>;

/// The successor of `current` for `order`: the experts it keeps copied from `current`, the ones
/// it gains from the order's handovers. Throws troupe::error naming a parameter or moment that
/// reached neither, or one of the wrong shape; `current` is not changed either way. Without an
/// optimizer (serving) the successor has none either.
shard_successor prepare_successor(expert_shard& current, const adamw* optimizer,
                                  const expert_placement_order& order, const shard_factory& build,
                                  adamw_settings settings);

}  // namespace troupe
