#include "runtime/placement/eplb.hpp"

#include <algorithm>
#include <numeric>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

/// Items to `packs` packs of equal counts: items by falling weight (the first of equal ones
/// first), each to the lightest pack with room (the first of equal ones). pack[i], rank[i]: the
/// pack of item i and its place in it.
void balanced_packing(std::span<const float> weight, std::int64_t packs,
                      std::vector<std::int64_t>& pack, std::vector<std::int64_t>& rank) {
  const auto n = static_cast<std::int64_t>(weight.size());
  const std::int64_t per_pack = n / packs;
  pack.assign(static_cast<std::size_t>(n), 0);
  rank.assign(static_cast<std::size_t>(n), 0);
  if (per_pack == 1) {
    std::iota(pack.begin(), pack.end(), 0);
    return;
  }
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    return weight[static_cast<std::size_t>(a)] > weight[static_cast<std::size_t>(b)];
  });
  std::vector<float> pack_weight(static_cast<std::size_t>(packs), 0.0f);
  std::vector<std::int64_t> pack_items(static_cast<std::size_t>(packs), 0);
  for (const std::int64_t item : order) {
    std::int64_t best = -1;
    for (std::int64_t p = 0; p < packs; ++p)
      if (pack_items[static_cast<std::size_t>(p)] < per_pack &&
          (best < 0 ||
           pack_weight[static_cast<std::size_t>(p)] < pack_weight[static_cast<std::size_t>(best)]))
        best = p;
    pack[static_cast<std::size_t>(item)] = best;
    rank[static_cast<std::size_t>(item)] = pack_items[static_cast<std::size_t>(best)]++;
    pack_weight[static_cast<std::size_t>(best)] += weight[static_cast<std::size_t>(item)];
  }
}

/// `physical` slots for weight.size() experts: one each, then each further slot to the expert
/// with the highest weight per replica (the first of equal ones).
void replicate_experts(std::span<const float> weight, std::int64_t physical,
                       std::vector<std::int64_t>& phy2log, std::vector<std::int64_t>& rank,
                       std::vector<std::int64_t>& count) {
  const auto logical = static_cast<std::int64_t>(weight.size());
  phy2log.resize(static_cast<std::size_t>(physical));
  rank.assign(static_cast<std::size_t>(physical), 0);
  count.assign(static_cast<std::size_t>(logical), 1);
  std::iota(phy2log.begin(), phy2log.begin() + logical, 0);
  for (std::int64_t slot = logical; slot < physical; ++slot) {
    std::int64_t best = 0;
    float best_load = weight[0] / static_cast<float>(count[0]);
    for (std::int64_t e = 1; e < logical; ++e) {
      const float per_replica = weight[static_cast<std::size_t>(e)] /
                                static_cast<float>(count[static_cast<std::size_t>(e)]);
      if (per_replica > best_load) {
        best = e;
        best_load = per_replica;
      }
    }
    phy2log[static_cast<std::size_t>(slot)] = best;
    rank[static_cast<std::size_t>(slot)] = count[static_cast<std::size_t>(best)]++;
  }
}

std::vector<std::int64_t> inverse(const std::vector<std::int64_t>& permutation) {
  std::vector<std::int64_t> out(permutation.size());
  for (std::size_t i = 0; i < permutation.size(); ++i)
    out[static_cast<std::size_t>(permutation[i])] = static_cast<std::int64_t>(i);
  return out;
}

/// One layer, hierarchically (groups to nodes, replicas within nodes, replicas to devices).
void place_layer(std::span<const float> w, std::int64_t physical, std::int64_t groups,
                 std::int64_t nodes, std::int64_t devices, std::int64_t* phy2log,
                 std::int64_t* phy_rank, std::int64_t* logcnt) {
  const auto logical = static_cast<std::int64_t>(w.size());
  const std::int64_t group_size = logical / groups, groups_per_node = groups / nodes;
  const std::int64_t per_node = logical / nodes, physical_per_node = physical / nodes;
  const std::int64_t per_device = physical / devices;
  // Groups to nodes: an expert's node-major index (mlog) from its group's pack and rank.
  std::vector<float> group_load(static_cast<std::size_t>(groups), 0.0f);
  for (std::int64_t e = 0; e < logical; ++e)
    group_load[static_cast<std::size_t>(e / group_size)] += w[static_cast<std::size_t>(e)];
  std::vector<std::int64_t> group_pack, group_rank;
  balanced_packing(group_load, nodes, group_pack, group_rank);
  std::vector<std::int64_t> log2mlog(static_cast<std::size_t>(logical));
  for (std::int64_t e = 0; e < logical; ++e) {
    const auto g = static_cast<std::size_t>(e / group_size);
    log2mlog[static_cast<std::size_t>(e)] =
        (group_pack[g] * groups_per_node + group_rank[g]) * group_size + e % group_size;
  }
  const std::vector<std::int64_t> mlog2log = inverse(log2mlog);
  std::vector<std::int64_t> mlogcnt(static_cast<std::size_t>(logical));
  for (std::int64_t node = 0; node < nodes; ++node) {
    // Replicas within the node, then packed to its devices.
    std::vector<float> node_load(static_cast<std::size_t>(per_node));
    for (std::int64_t j = 0; j < per_node; ++j)
      node_load[static_cast<std::size_t>(j)] =
          w[static_cast<std::size_t>(mlog2log[static_cast<std::size_t>(node * per_node + j)])];
    std::vector<std::int64_t> phy2mlog, rank, count;
    replicate_experts(node_load, physical_per_node, phy2mlog, rank, count);
    std::vector<float> replica_load(static_cast<std::size_t>(physical_per_node));
    for (std::int64_t p = 0; p < physical_per_node; ++p) {
      const auto m = static_cast<std::size_t>(phy2mlog[static_cast<std::size_t>(p)]);
      replica_load[static_cast<std::size_t>(p)] = node_load[m] / static_cast<float>(count[m]);
    }
    std::vector<std::int64_t> device, place;
    balanced_packing(replica_load, devices / nodes, device, place);
    std::vector<std::int64_t> phy2pphy(static_cast<std::size_t>(physical_per_node));
    for (std::int64_t p = 0; p < physical_per_node; ++p)
      phy2pphy[static_cast<std::size_t>(p)] =
          device[static_cast<std::size_t>(p)] * per_device + place[static_cast<std::size_t>(p)];
    const std::vector<std::int64_t> pphy2phy = inverse(phy2pphy);
    for (std::int64_t q = 0; q < physical_per_node; ++q) {
      const auto p = static_cast<std::size_t>(pphy2phy[static_cast<std::size_t>(q)]);
      const std::int64_t mlog = phy2mlog[p] + node * per_node;
      phy2log[node * physical_per_node + q] = mlog2log[static_cast<std::size_t>(mlog)];
      phy_rank[node * physical_per_node + q] = rank[p];
    }
    for (std::int64_t j = 0; j < per_node; ++j)
      mlogcnt[static_cast<std::size_t>(node * per_node + j)] = count[static_cast<std::size_t>(j)];
  }
  for (std::int64_t e = 0; e < logical; ++e)
    logcnt[e] = mlogcnt[static_cast<std::size_t>(log2mlog[static_cast<std::size_t>(e)])];
}

}  // namespace

std::vector<double> eplb_plan::device_load(std::span<const float> load, std::int64_t layer,
                                           std::int64_t devices) const {
  std::vector<double> out(static_cast<std::size_t>(devices), 0.0);
  const std::int64_t per_device = physical / devices;
  for (std::int64_t p = 0; p < physical; ++p) {
    const std::int64_t e = phy2log[static_cast<std::size_t>(layer * physical + p)];
    out[static_cast<std::size_t>(p / per_device)] +=
        static_cast<double>(load[static_cast<std::size_t>(layer * logical + e)]) /
        static_cast<double>(logcnt[static_cast<std::size_t>(layer * logical + e)]);
  }
  return out;
}

eplb_plan rebalance_experts(std::span<const float> load, std::int64_t layers, std::int64_t experts,
                            const eplb_shape& shape) {
  if (layers < 1 || experts < 1 || static_cast<std::int64_t>(load.size()) != layers * experts)
    fail("eplb: {} loads for {} layers of {} experts", load.size(), layers, experts);
  if (shape.groups < 1 || shape.nodes < 1 || shape.devices < 1)
    fail("eplb: groups {}, nodes {} and devices {} must be positive", shape.groups, shape.nodes,
         shape.devices);
  if (shape.replicas < experts)
    fail("eplb: {} replicas cannot hold {} experts (one replica each at least)", shape.replicas,
         experts);
  if (shape.replicas % shape.devices != 0)
    fail("eplb: {} replicas do not split over {} devices", shape.replicas, shape.devices);
  if (shape.devices % shape.nodes != 0)
    fail("eplb: {} devices do not split over {} nodes", shape.devices, shape.nodes);
  if (experts % shape.groups != 0)
    fail("eplb: {} experts do not split into {} groups", experts, shape.groups);
  for (const float v : load)
    if (!(v >= 0.0f)) fail("eplb: loads must be finite and non-negative, not {}", v);
  eplb_plan plan;
  plan.layers = layers;
  plan.logical = experts;
  plan.physical = shape.replicas;
  plan.hierarchical = shape.groups % shape.nodes == 0;
  const std::int64_t groups = plan.hierarchical ? shape.groups : 1;
  const std::int64_t nodes = plan.hierarchical ? shape.nodes : 1;
  plan.phy2log.resize(static_cast<std::size_t>(layers * shape.replicas));
  plan.phy_rank.resize(plan.phy2log.size());
  plan.logcnt.resize(static_cast<std::size_t>(layers * experts));
  for (std::int64_t l = 0; l < layers; ++l)
    place_layer(
        load.subspan(static_cast<std::size_t>(l * experts), static_cast<std::size_t>(experts)),
        shape.replicas, groups, nodes, shape.devices, plan.phy2log.data() + l * shape.replicas,
        plan.phy_rank.data() + l * shape.replicas, plan.logcnt.data() + l * experts);
  plan.max_replicas = *std::max_element(plan.logcnt.begin(), plan.logcnt.end());
  plan.log2phy.assign(static_cast<std::size_t>(layers * experts * plan.max_replicas), -1);
  for (std::int64_t l = 0; l < layers; ++l)
    for (std::int64_t p = 0; p < shape.replicas; ++p) {
      const auto at = static_cast<std::size_t>(l * shape.replicas + p);
      plan.log2phy[static_cast<std::size_t>((l * experts + plan.phy2log[at]) * plan.max_replicas +
                                            plan.phy_rank[at])] = p;
    }
  return plan;
}

}  // namespace troupe
