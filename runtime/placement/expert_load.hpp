#pragma once

// Per-layer, per-expert loads for the expert placement (eplb.hpp), read from what troupe and
// Prometheus write: a JSON matrix [[layer 0's loads], ...] (or {"LAYER": [loads], ...}), a
// training log (`troupe train --log-json`: the `expert_load` of every step, summed), or a
// Prometheus query result of troupe_expert_tokens_routed_total (labels `layer` and `expert`).

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/placement/expert_placement.hpp"

namespace troupe {

struct expert_loads {
  std::vector<std::string> layers;  ///< each row's layer name (its index, or the file's key)
  std::int64_t experts = 0;
  std::vector<float> load;  ///< [layers][experts]
  std::string format;       ///< "matrix", "training log" or "prometheus"
};

/// Reads `file` in whichever of the three formats it holds. Throws troupe::error naming the
/// file, the line where there is one, and what is wrong (rows of different lengths, a negative
/// or non-numeric load, no loads at all).
expert_loads read_expert_loads(const std::filesystem::path& file);

/// A rebalance request's "load" (`troupe ctl JOB rebalance --load`): {"LAYER": [tokens per
/// expert], ...} naming MoE layers, or rows in the MoE layers' order (a list, or an object whose
/// keys are row numbers), `experts` numbers each; loads that are not whole numbers (normalised
/// ones) are scaled by 10^6, which keeps their ratios. Throws troupe::error ("the rebalance
/// request: ...") for rows of another length, values that are no token counts, a layer given
/// twice, no layer, or rows that are neither the MoE layers nor as many.
layer_expert_load requested_expert_load(const nlohmann::json& given,
                                        const std::vector<std::int64_t>& moe_layers,
                                        std::int64_t experts);

}  // namespace troupe
