#include "runtime/placement/expert_placement.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <set>
#include <tuple>

#include <fmt/format.h>

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

void expert_placement::check(std::int64_t experts, bool replicas) const {
  for (const auto& [layer, shard_lists] : layers) {
    if (static_cast<std::int64_t>(shard_lists.size()) != shards())
      fail("expert placement: layer {} has {} shards, layer {} has {}", layer, shard_lists.size(),
           layers.begin()->first, shards());
    std::vector<int> holders(static_cast<std::size_t>(experts), 0);
    for (const auto& ids : shard_lists) {
      if (std::adjacent_find(ids.begin(), ids.end(), std::greater_equal<>()) != ids.end())
        fail("expert placement: layer {}: a shard's experts are not in ascending order, once each",
             layer);
      for (const std::int64_t e : ids) {
        if (e < 0 || e >= experts)
          fail("expert placement: layer {} places expert {}, but the model has {}", layer, e,
               experts);
        ++holders[static_cast<std::size_t>(e)];
      }
    }
    for (std::int64_t e = 0; e < experts; ++e) {
      const int n = holders[static_cast<std::size_t>(e)];
      if (n == 0 || (n > 1 && !replicas))
        fail("expert placement: layer {} places expert {} on {} shards; each needs exactly one{}",
             layer, e, n, replicas ? " or more" : "");
    }
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
  std::vector<int> copies(load.size(), 0);
  for (const auto& ids : shard_lists)
    for (const std::int64_t e : ids)
      if (static_cast<std::size_t>(e) < load.size()) ++copies[static_cast<std::size_t>(e)];
  double total = 0.0, heaviest = 0.0;
  for (const auto& ids : shard_lists) {
    double sum = 0.0;
    for (const std::int64_t e : ids)
      if (static_cast<std::size_t>(e) < load.size())
        sum += static_cast<double>(load[static_cast<std::size_t>(e)]) /
               copies[static_cast<std::size_t>(e)];
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

namespace {

void check_split(std::int64_t experts, std::int64_t redundant, std::int64_t shards) {
  if (shards < 1) fail("rebalance: the job has no expert shards");
  if (redundant < 0) fail("rebalance: {} redundant experts", redundant);
  if ((experts + redundant) % shards != 0)
    fail(
        "rebalance: the {} routed experts{} do not split evenly over the {} expert shards; EPLB "
        "gives every shard the same number",
        experts + redundant,
        redundant > 0 ? fmt::format(" and redundant replicas ({} + {})", experts, redundant) : "",
        shards);
}

/// EPLB's packs of one layer: the experts of each shard (ascending, once each).
///
/// NOTES: EPLB may pack two replicas of one expert onto one device (equal loads do: the extra
/// replicas come last and fall to the packs in turn). A shard computes an expert once whatever
/// its copies, so such a pair is split: one of the two swaps with the item of another pack that
/// does not hold the expert, is not held by this pack, and has the closest weight (the lower pack,
/// then the earlier item, on ties). Packs keep their sizes; only what EPLB wasted moves.
std::vector<std::vector<std::int64_t>> eplb_packs(const std::vector<float>& weights,
                                                  std::int64_t experts, std::int64_t groups,
                                                  std::int64_t redundant, std::int64_t shards) {
  const std::int64_t physical = experts + redundant;
  eplb_shape shape;
  shape.replicas = physical;
  shape.groups = groups > 0 && experts % groups == 0 ? groups : 1;
  shape.devices = shards;
  const eplb_plan plan = rebalance_experts(weights, 1, experts, shape);
  const std::int64_t per_shard = physical / shards;
  struct item {
    std::int64_t expert;
    float weight;
  };
  std::vector<std::vector<item>> packs(static_cast<std::size_t>(shards));
  for (std::int64_t slot = 0; slot < physical; ++slot) {
    const std::int64_t e = plan.phy2log[static_cast<std::size_t>(slot)];
    packs[static_cast<std::size_t>(slot / per_shard)].push_back(
        {e, weights[static_cast<std::size_t>(e)] /
                static_cast<float>(plan.logcnt[static_cast<std::size_t>(e)])});
  }
  auto holds = [](const std::vector<item>& pack, std::int64_t e) {
    return std::any_of(pack.begin(), pack.end(), [e](const item& i) { return i.expert == e; });
  };
  for (std::size_t p = 0; p < packs.size(); ++p)
    for (std::size_t a = 0; a < packs[p].size(); ++a)
      for (std::size_t b = a + 1; b < packs[p].size(); ++b) {
        if (packs[p][b].expert != packs[p][a].expert) continue;
        const item twin = packs[p][b];
        std::size_t best_pack = packs.size(), best_item = 0;
        float best_gap = 0.0f;
        for (std::size_t q = 0; q < packs.size(); ++q) {
          if (q == p || holds(packs[q], twin.expert)) continue;
          for (std::size_t j = 0; j < packs[q].size(); ++j) {
            if (holds(packs[p], packs[q][j].expert)) continue;
            const float gap = std::fabs(packs[q][j].weight - twin.weight);
            if (best_pack == packs.size() || gap < best_gap) {
              best_pack = q;
              best_item = j;
              best_gap = gap;
            }
          }
        }
        if (best_pack == packs.size()) continue;  // nowhere to go: the copy is dropped below
        std::swap(packs[p][b], packs[best_pack][best_item]);
      }
  std::vector<std::vector<std::int64_t>> out(packs.size());
  for (std::size_t p = 0; p < packs.size(); ++p) {
    for (const item& i : packs[p]) out[p].push_back(i.expert);
    std::sort(out[p].begin(), out[p].end());
    out[p].erase(std::unique(out[p].begin(), out[p].end()), out[p].end());
  }
  return out;
}

}  // namespace

expert_placement initial_placement(const std::vector<std::int64_t>& moe_layers,
                                   std::int64_t experts, std::int64_t shards, std::int64_t groups,
                                   std::int64_t redundant) {
  check_split(experts, redundant, shards);
  const std::vector<float> equal(static_cast<std::size_t>(experts), 1.0f);
  const auto packs = eplb_packs(equal, experts, groups, redundant, shards);
  expert_placement placement;
  for (const std::int64_t layer : moe_layers) placement.layers[layer] = packs;
  placement.check(experts, redundant > 0);
  return placement;
}

expert_placement balanced_placement(const expert_placement& current, const layer_expert_load& load,
                                    std::int64_t experts, std::int64_t groups,
                                    std::int64_t redundant) {
  const std::int64_t shards = current.shards();
  check_split(experts, redundant, shards);
  expert_placement next = current;
  for (auto& [layer, shard_lists] : next.layers) {
    auto it = load.find(layer);
    if (it == load.end()) continue;
    const std::vector<std::int64_t>& counts = it->second;
    if (static_cast<std::int64_t>(counts.size()) != experts)
      fail("rebalance: layer {} has a load for {} experts, the model has {}", layer, counts.size(),
           experts);
    const bool any =
        std::any_of(counts.begin(), counts.end(), [](std::int64_t c) { return c > 0; });
    if (!any) continue;
    const std::vector<float> weights(counts.begin(), counts.end());
    auto candidate =
        match_packs(eplb_packs(weights, experts, groups, redundant, shards), shard_lists);
    expert_placement trial;
    trial.layers[layer] = candidate;
    if (trial.imbalance(layer, counts) < current.imbalance(layer, counts))
      shard_lists = std::move(candidate);
  }
  next.check(experts, redundant > 0);
  return next;
}

}  // namespace troupe
