// DeepSeek's EPLB (runtime/placement/eplb.hpp): the README example of github.com/deepseek-ai/EPLB
// (2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 devices) gives its published
// placement exactly; on random loads every expert is placed, the replica counts fill the slots,
// log2phy inverts phy2log, and the busiest device carries less than with the experts placed in
// order without replicas (in at least 97% of the layers, 10% less on average).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "runtime/core/error.hpp"
#include "runtime/placement/eplb.hpp"
#include "runtime/placement/expert_load.hpp"
#include "tests/support/command_runs.hpp"

namespace {

using namespace troupe;

TEST(Eplb, ReproducesTheReferenceExample) {
  const std::vector<float> load{90, 132, 40,  61, 104, 165, 39,  4,   73,  56, 183, 86,
                                20, 107, 104, 64, 19,  197, 187, 157, 172, 86, 16,  27};
  const eplb_plan plan = rebalance_experts(load, 2, 12, {16, 4, 2, 8});
  EXPECT_TRUE(plan.hierarchical);
  const std::vector<std::int64_t> expected{5, 6,  5, 7, 8, 4,  3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
                                           7, 10, 6, 8, 6, 11, 8, 9, 2,  4, 5,  1, 5, 0, 3,  1};
  EXPECT_EQ(plan.phy2log, expected);
}

TEST(Eplb, RandomLoadsArePlacedWholeAndNoWorse) {
  std::mt19937 rng(3);
  int compared = 0, no_worse = 0;
  double ratio_sum = 0.0;
  for (int trial = 0; trial < 200; ++trial) {
    const std::int64_t groups = std::int64_t{1} << (rng() % 4),
                       nodes = std::int64_t{1} << (rng() % 3);
    const std::int64_t devices = nodes * (1 + rng() % 4), experts = groups * (2 + rng() % 8);
    const std::int64_t replicas =
        ((experts + devices - 1) / devices + static_cast<std::int64_t>(rng() % 3)) * devices;
    const std::int64_t layers = 1 + rng() % 3;
    std::vector<float> load(static_cast<std::size_t>(layers * experts));
    std::uniform_int_distribution<int> pick(0, 1000);
    for (float& v : load) v = static_cast<float>(pick(rng));
    const eplb_plan plan =
        rebalance_experts(load, layers, experts, {replicas, groups, nodes, devices});
    for (std::int64_t l = 0; l < layers; ++l) {
      std::int64_t slots = 0;
      for (std::int64_t e = 0; e < experts; ++e) {
        const std::int64_t count = plan.logcnt[static_cast<std::size_t>(l * experts + e)];
        ASSERT_GE(count, 1) << "expert " << e << " unplaced";
        slots += count;
        for (std::int64_t r = 0; r < plan.max_replicas; ++r) {
          const std::int64_t p =
              plan.log2phy[static_cast<std::size_t>((l * experts + e) * plan.max_replicas + r)];
          if (r < count)
            ASSERT_EQ(plan.phy2log[static_cast<std::size_t>(l * replicas + p)], e);
          else
            ASSERT_EQ(p, -1);
        }
      }
      EXPECT_EQ(slots, replicas);
      // Without EPLB: expert e on device e / (experts / devices), one replica each.
      if (experts % devices == 0) {
        std::vector<double> plain(static_cast<std::size_t>(devices), 0.0);
        for (std::int64_t e = 0; e < experts; ++e)
          plain[static_cast<std::size_t>(e / (experts / devices))] +=
              static_cast<double>(load[static_cast<std::size_t>(l * experts + e)]);
        const auto placed = plan.device_load(load, l, devices);
        const double busiest = *std::max_element(placed.begin(), placed.end());
        const double busiest_plain = *std::max_element(plain.begin(), plain.end());
        ++compared;
        ratio_sum += busiest / std::max(busiest_plain, 1e-9);
        if (busiest <= busiest_plain + 1e-3) ++no_worse;
      }
    }
  }
  // Greedy packing is a heuristic with no guarantee per layer (the groups are packed to nodes
  // first): over the layers drawn here the busiest device is no busier than without EPLB in at
  // least 97% of them, and 10% less busy on average.
  EXPECT_GT(compared, 100);
  EXPECT_GE(no_worse, compared * 97 / 100);
  EXPECT_LE(ratio_sum / compared, 0.9);
  std::printf(
      "[ eplb ] busiest device vs experts in order: no busier in %d of %d layers, %.3f "
      "of its load on average\n",
      no_worse, compared, ratio_sum / compared);
}

TEST(Eplb, ShapesThatCannotBePlacedAreErrors) {
  const std::vector<float> load(12, 1.0f);
  EXPECT_THROW(rebalance_experts(load, 1, 12, {8, 4, 2, 8}), troupe::error);   // fewer slots
  EXPECT_THROW(rebalance_experts(load, 1, 12, {18, 4, 2, 8}), troupe::error);  // 18 % 8
  EXPECT_THROW(rebalance_experts(load, 1, 12, {16, 5, 2, 8}), troupe::error);  // 12 % 5
  EXPECT_THROW(rebalance_experts(load, 1, 12, {16, 4, 3, 8}), troupe::error);  // 8 % 3
  EXPECT_THROW(rebalance_experts(load, 2, 12, {16, 4, 2, 8}), troupe::error);  // 12 loads
}

std::filesystem::path write(const std::string& name, const std::string& text) {
  const auto file = troupe::testing::scratch_dir("eplb", name) / ("troupe-eplb-" + name);
  std::ofstream(file) << text;
  return file;
}

TEST(ExpertLoads, ReadsAMatrixATrainingLogAndAPrometheusResult) {
  const auto matrix = read_expert_loads(write("matrix.json", "[[1, 2, 3], [4, 5, 6]]"));
  EXPECT_EQ(matrix.format, "matrix");
  EXPECT_EQ(matrix.experts, 3);
  EXPECT_EQ(matrix.load, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  const auto log =
      read_expert_loads(write("log.json",
                              "{\"step\": 1, \"expert_load\": {\"2\": [1, 1], \"10\": [0, 2]}}\n\n"
                              "{\"step\": 2, \"expert_load\": {\"2\": [3, 0], \"10\": [1, 1]}}\n"));
  EXPECT_EQ(log.format, "training log");
  EXPECT_EQ(log.layers, (std::vector<std::string>{"2", "10"}));  // numeric order
  EXPECT_EQ(log.load, (std::vector<float>{4, 1, 1, 3}));         // summed over the steps
  const auto prometheus =
      read_expert_loads(write("prometheus.json",
                              R"({"status": "success", "data": {"resultType": "vector", "result": [
          {"metric": {"layer": "1", "expert": "1"}, "value": [1700000000, "7"]},
          {"metric": {"layer": "1", "expert": "0"}, "value": [1700000000, "5.5"]}]}})"));
  EXPECT_EQ(prometheus.format, "prometheus");
  EXPECT_EQ(prometheus.load, (std::vector<float>{5.5f, 7.0f}));
}

TEST(ExpertLoads, BadFilesNameTheFileTheLineAndTheCause) {
  const auto message = [](const std::filesystem::path& file) {
    try {
      read_expert_loads(file);
    } catch (const troupe::error& e) {
      return std::string(e.what());
    }
    return std::string("read");
  };
  EXPECT_NE(message(write("ragged.json", "[[1, 2], [3]]")).find("layer 1 has 1 experts"),
            std::string::npos);
  EXPECT_NE(message(write("negative.json", "[[1, -2]]")).find("finite and non-negative"),
            std::string::npos);
  const std::string garbled =
      message(write("garbled.json", "{\"expert_load\": {\"1\": [1]}}\nnot json\n"));
  EXPECT_NE(garbled.find("troupe-eplb-garbled.json:2: not JSON"), std::string::npos) << garbled;
  EXPECT_NE(message(write("empty.json", "[]")).find("no expert loads found"), std::string::npos);
}

}  // namespace
