// Where the routed experts run on the expert shards (runtime/placement/expert_placement.hpp):
// a placement checks that each layer places every expert once; the re-placement for a load
// (EPLB with one replica per expert and the shards as devices) keeps every shard's count, never
// raises a layer's shard imbalance, lowers it on skewed random loads, moves nothing when a layer
// is balanced already, and moves only the experts whose shard changes. With redundant copies
// (serving), the heaviest experts get them, on different shards.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>

#include "runtime/core/error.hpp"
#include "runtime/placement/expert_placement.hpp"

namespace {

using namespace troupe;

expert_placement in_order(std::int64_t experts, std::int64_t shards,
                          const std::vector<std::int64_t>& layers) {
  std::vector<std::vector<std::int64_t>> lists(static_cast<std::size_t>(shards));
  for (std::int64_t e = 0; e < experts; ++e)
    lists[static_cast<std::size_t>(e / (experts / shards))].push_back(e);
  return expert_placement::uniform(layers, lists);
}

TEST(ExpertPlacement, ChecksThatEveryExpertIsPlacedOnce) {
  expert_placement p = in_order(8, 2, {1, 2});
  EXPECT_NO_THROW(p.check(8));
  EXPECT_EQ(p.shards(), 2);
  EXPECT_EQ(p.owners(1, 8), (std::vector<std::int64_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  p.layers[2][1] = {4, 5, 6};
  try {
    p.check(8);
    FAIL() << "expert 7 is nowhere";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 2 places expert 7 on 0 shards"), std::string::npos)
        << e.what();
  }
  p.layers[2][1] = {4, 5, 6, 7, 3};
  EXPECT_THROW(p.check(8), error);  // 3 twice, and out of order
  EXPECT_TRUE(expert_placement::uniform({1, 2}, {}).layers.empty());
}

TEST(ExpertPlacement, MovesOnlyTheExpertsThatChangeShard) {
  const expert_placement from = in_order(8, 2, {1, 2});
  expert_placement to = from;
  to.layers[2] = {{0, 1, 2, 7}, {3, 4, 5, 6}};
  const auto moves = moves_between(from, to);
  ASSERT_EQ(moves.size(), 2u);
  EXPECT_EQ(moves[0].layer, 2);
  EXPECT_EQ(moves[0].expert, 3);
  EXPECT_EQ(moves[0].from, 0);
  EXPECT_EQ(moves[0].to, 1);
  EXPECT_EQ(moves[1].expert, 7);
  EXPECT_EQ(moves[1].to, 0);
  EXPECT_TRUE(moves_between(from, from).empty());
}

TEST(ExpertPlacement, AHeavyShardGivesExpertsAway) {
  const expert_placement current = in_order(8, 2, {1});
  // Experts 0-3 carry almost everything: shard 0 holds 4x the mean of shard 1.
  const layer_expert_load load{{1, {100, 90, 80, 70, 1, 2, 3, 4}}};
  EXPECT_NEAR(current.imbalance(1, load.at(1)), 2.0 * 340 / 350, 1e-12);
  const expert_placement next = balanced_placement(current, load, 8, 4);
  next.check(8);
  EXPECT_LT(next.imbalance(1, load.at(1)), 1.05);
  for (const auto& lists : next.layers.at(1)) EXPECT_EQ(lists.size(), 4u);
  // The shards keep what they can: a balanced layer moves nothing.
  const layer_expert_load even{{1, {5, 5, 5, 5, 5, 5, 5, 5}}};
  EXPECT_EQ(balanced_placement(current, even, 8, 4), current);
  // A layer without load stays.
  EXPECT_EQ(balanced_placement(current, {}, 8, 4), current);
}

TEST(ExpertPlacement, RandomSkewedLoadsNeverGetWorse) {
  std::mt19937 rng(7);
  int lowered = 0;
  for (int trial = 0; trial < 100; ++trial) {
    const std::int64_t shards = 2 + static_cast<std::int64_t>(rng() % 7);
    const std::int64_t experts = shards * (2 + static_cast<std::int64_t>(rng() % 8));
    const expert_placement current = in_order(experts, shards, {3, 4});
    layer_expert_load load;
    std::exponential_distribution<double> skew(0.02);
    for (const std::int64_t layer : {3, 4})
      for (std::int64_t e = 0; e < experts; ++e)
        load[layer].push_back(static_cast<std::int64_t>(skew(rng)));
    const expert_placement next = balanced_placement(current, load, experts, 1);
    next.check(experts);
    for (const std::int64_t layer : {3, 4}) {
      for (const auto& ids : next.layers.at(layer))
        EXPECT_EQ(static_cast<std::int64_t>(ids.size()), experts / shards);
      const double before = current.imbalance(layer, load.at(layer));
      const double after = next.imbalance(layer, load.at(layer));
      EXPECT_LE(after, before) << "trial " << trial << " layer " << layer;
      if (after < before) ++lowered;
    }
    for (const auto& m : moves_between(current, next))
      EXPECT_NE(current.owners(m.layer, experts)[static_cast<std::size_t>(m.expert)],
                next.owners(m.layer, experts)[static_cast<std::size_t>(m.expert)]);
  }
  EXPECT_GE(lowered, 150) << "of 200 layers";
}

TEST(ExpertPlacement, UnevenSplitsAreRefusedWithTheReason) {
  const expert_placement current = expert_placement::uniform({1}, {{0, 1, 2}, {3, 4}});
  try {
    balanced_placement(current, {{1, {1, 2, 3, 4, 5}}}, 5, 1);
    FAIL() << "5 experts on 2 shards";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("do not split evenly over the 2 expert shards"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(balanced_placement(in_order(8, 2, {1}), {{1, {1, 2, 3}}}, 8, 1), error);
}

TEST(ExpertPlacement, RedundantCopiesLandOnDifferentShards) {
  // Equal loads: EPLB gives the two extra slots to experts 0 and 1 and packs each pair onto one
  // device; the shards get one copy each instead.
  for (const std::int64_t groups : {1, 4}) {
    const expert_placement p = initial_placement({1, 2}, 8, 2, groups, 2);
    p.check(8, true);
    EXPECT_EQ(p.layers.at(1),
              (std::vector<std::vector<std::int64_t>>{{0, 1, 2, 4, 6}, {0, 1, 3, 5, 7}}));
  }
  // Skewed: the heaviest experts hold the copies, and every shard its share of the slots.
  const layer_expert_load load{{1, {500, 10, 10, 10, 10, 10, 10, 300}}};
  const expert_placement next =
      balanced_placement(initial_placement({1}, 8, 2, 1, 2), load, 8, 1, 2);
  next.check(8, true);
  for (const auto& ids : next.layers.at(1)) {
    EXPECT_EQ(ids.size(), 5u);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 0), 1);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), 7), 1);
  }
  EXPECT_LT(next.imbalance(1, load.at(1)), 1.1);
  EXPECT_THROW(initial_placement({1}, 8, 3, 1, 0), error);  // 8 slots over 3 shards
}

}  // namespace
