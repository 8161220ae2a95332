#include "runtime/placement/expert_placement.hpp"

#include <algorithm>
#include <set>
#include <tuple>

#include "runtime/core/error.hpp"
#include "runtime/placement/eplb.hpp"

namespace troupe {

expert_placement expert_placement::uniform(
    const std::vector<std::int64_t>& moe_layers,
    const std::vector<std::vector<std::int64_t>>& shard_experts) {
  expert_placement placement;
  if (shard_experts.empty()) return placement;
  for (const std::int64_t layer : moe_layers) placement.layers[layer] = shard_experts;
  return placement;
}

std::int64_t expert_placement::shards() const {
  return layers.empty() ? 0 : static_cast<std::int64_t>(layers.begin()->second.size());
}

void expert_placement::check(std::int64_t experts) const {
  for (const auto& [layer, shard_lists] : layers) {
    if (static_cast<std::int64_t>(shard_lists.size()) != shards())
      fail("expert placement: layer {} has {} shards, layer {} has {}", layer, shard_lists.size(),
           layers.begin()->first, shards());
    std::vector<int> holders(static_cast<std::size_t>(experts), 0);
    for (const auto& ids : shard_lists) {
      if (!std::is_sorted(ids.begin(), ids.end()))
        fail("expert placement: layer {}: a shard's experts are not in ascending order", layer);
      for (const std::int64_t e : ids) {
        if (e < 0 || e >= experts)
          fail("expert placement: layer {} places expert {}, but the model has {}", layer, e,
               experts);
        ++holders[static_cast<std::size_t>(e)];
      }
    }
    for (std::int64_t e = 0; e < experts; ++e)
      if (holders[static_cast<std::size_t>(e)] != 1)
        fail("expert placement: layer {} places expert {} on {} shards; each needs exactly one",
             layer, e, holders[static_cast<std::size_t>(e)]);
  }
}

std::vector<std::int64_t> expert_placement::owners(std::int64_t layer, std::int64_t experts) const {
  std::vector<std::int64_t> owner(static_cast<std::size_t>(experts), -1);
  const auto& shard_lists = layers.at(layer);
  for (std::size_t s = 0; s < shard_lists.size(); ++s)
    for (const std::int64_t e : shard_lists[s])
      owner.at(static_cast<std::size_t>(e)) = static_cast<std::int64_t>(s);
  return owner;
}

std::map<std::int64_t, std::vector<std::int64_t>> expert_placement::of_shard(
    std::int64_t shard) const {
  std::map<std::int64_t, std::vector<std::int64_t>> out;
  for (const auto& [layer, shard_lists] : layers)
    out[layer] = shard_lists.at(static_cast<std::size_t>(shard));
  return out;
}

double expert_placement::imbalance(std::int64_t layer,
                                   const std::vector<std::int64_t>& load) const {
  const auto& shard_lists = layers.at(layer);
  double total = 0.0, heaviest = 0.0;
  for (const auto& ids : shard_lists) {
    double sum = 0.0;
    for (const std::int64_t e : ids)
      if (static_cast<std::size_t>(e) < load.size())
        sum += static_cast<double>(load[static_cast<std::size_t>(e)]);
    total += sum;
    heaviest = std::max(heaviest, sum);
  }
  return total > 0.0 ? heaviest * static_cast<double>(shard_lists.size()) / total : 0.0;
}

std::vector<expert_move> moves_between(const expert_placement& from, const expert_placement& to) {
  std::vector<expert_move> moves;
  for (const auto& [layer, shard_lists] : to.layers) {
    std::int64_t experts = 0;
    for (const auto& ids : shard_lists) experts += static_cast<std::int64_t>(ids.size());
    const auto before = from.owners(layer, experts);
    const auto after = to.owners(layer, experts);
    for (std::int64_t e = 0; e < experts; ++e)
      if (before[static_cast<std::size_t>(e)] != after[static_cast<std::size_t>(e)])
        moves.push_back(
            {layer, e, before[static_cast<std::size_t>(e)], after[static_cast<std::size_t>(e)]});
  }
  return moves;
}

namespace {

/// EPLB's packs of one layer given to the shards: the pair (pack, shard) with the most experts in
/// common first, then the next of the rest (ties: the lower pack, then the lower shard).
std::vector<std::vector<std::int64_t>> match_packs(
    const std::vector<std::vector<std::int64_t>>& packs,
    const std::vector<std::vector<std::int64_t>>& current) {
  const std::size_t n = packs.size();
  std::vector<std::tuple<std::int64_t, std::size_t, std::size_t>> pairs;
  for (std::size_t p = 0; p < n; ++p) {
    const std::set<std::int64_t> in_pack(packs[p].begin(), packs[p].end());
    for (std::size_t s = 0; s < n; ++s) {
      std::int64_t common = 0;
      for (const std::int64_t e : current[s]) common += in_pack.count(e);
      pairs.emplace_back(-common, p, s);
    }
  }
  std::sort(pairs.begin(), pairs.end());
  std::vector<std::vector<std::int64_t>> shards(n);
  std::vector<bool> pack_used(n, false), shard_used(n, false);
  for (const auto& [negative_common, p, s] : pairs) {
    if (pack_used[p] || shard_used[s]) continue;
    pack_used[p] = shard_used[s] = true;
    shards[s] = packs[p];
  }
  return shards;
}

}  // namespace

expert_placement balanced_placement(const expert_placement& current, const layer_expert_load& load,
                                    std::int64_t experts, std::int64_t groups) {
  const std::int64_t shards = current.shards();
  if (shards < 1) fail("rebalance: the job has no expert shards");
  if (experts % shards != 0)
    fail(
        "rebalance: the {} routed experts do not split evenly over the {} expert shards; EPLB "
        "gives every shard the same number",
        experts, shards);
  expert_placement next = current;
  for (auto& [layer, shard_lists] : next.layers) {
    auto it = load.find(layer);
    if (it == load.end()) continue;
    const std::vector<std::int64_t>& counts = it->second;
    if (static_cast<std::int64_t>(counts.size()) != experts)
      fail("rebalance: layer {} has a load for {} experts, the model has {}", layer, counts.size(),
           experts);
    std::vector<float> weights(counts.begin(), counts.end());
    const bool any =
        std::any_of(counts.begin(), counts.end(), [](std::int64_t c) { return c > 0; });
    if (!any) continue;
    eplb_shape shape;
    shape.replicas = experts;
    shape.groups = groups > 0 && experts % groups == 0 ? groups : 1;
    shape.devices = shards;
    const eplb_plan plan = rebalance_experts(weights, 1, experts, shape);
    const std::int64_t per_shard = experts / shards;
    std::vector<std::vector<std::int64_t>> packs(static_cast<std::size_t>(shards));
    for (std::int64_t slot = 0; slot < experts; ++slot)
      packs[static_cast<std::size_t>(slot / per_shard)].push_back(
          plan.phy2log[static_cast<std::size_t>(slot)]);
    for (auto& pack : packs) std::sort(pack.begin(), pack.end());
    auto candidate = match_packs(packs, shard_lists);
    expert_placement trial;
    trial.layers[layer] = candidate;
    if (trial.imbalance(layer, counts) < current.imbalance(layer, counts))
      shard_lists = std::move(candidate);
  }
  next.check(experts);
  return next;
}

}  // namespace troupe
