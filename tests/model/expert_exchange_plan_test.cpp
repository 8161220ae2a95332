// The routes of expert parallelism's all-to-all (runtime/experts/expert_exchange_plan.hpp),
// checked by moving labelled rows between simulated ranks on the host: after a dispatch every
// rank holds exactly its experts' rows, expert by expert and within an expert by source rank and
// row; a combine brings every row back to its place. Random layouts (experts anywhere, ranks with
// none) and random counts (zeros included); malformed layouts and counts are refused by name.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/experts/expert_exchange_plan.hpp"

namespace {

using namespace troupe;
using label = std::pair<std::int32_t, std::int64_t>;  // (token rank, token row)

/// rows[i] = in[source[i]] (source empty: as they are).
std::vector<label> reorder(const std::vector<label>& in, const std::vector<std::int64_t>& source) {
  if (source.empty()) return in;
  std::vector<label> out;
  for (std::int64_t s : source) out.push_back(in.at(static_cast<std::size_t>(s)));
  return out;
}

/// Every rank's buffer split by its per-peer counts, delivered in rank order.
std::vector<std::vector<label>> all_to_all(const std::vector<std::vector<label>>& buffers,
                                           const std::vector<std::vector<std::int64_t>>& sends) {
  const std::size_t ranks = buffers.size();
  std::vector<std::vector<label>> out(ranks);
  for (std::size_t p = 0; p < ranks; ++p)
    for (std::size_t q = 0; q < ranks; ++q) {
      std::int64_t at = 0;
      for (std::size_t x = 0; x < p; ++x) at += sends[q][x];
      for (std::int64_t i = 0; i < sends[q][p]; ++i)
        out[p].push_back(buffers[q].at(static_cast<std::size_t>(at + i)));
    }
  return out;
}

void check_round_trip(const expert_rank_layout& layout,
                      const std::vector<std::vector<std::int64_t>>& counts) {
  const std::int32_t ranks = layout.ranks();
  std::vector<expert_exchange_plan> plans;
  for (std::int32_t p = 0; p < ranks; ++p) {
    std::vector<std::vector<std::int64_t>> received;
    for (std::int32_t q = 0; q < ranks; ++q)
      received.push_back(layout.counts_for(p, counts[static_cast<std::size_t>(q)]));
    plans.push_back(plan_exchange(layout, p, counts[static_cast<std::size_t>(p)], received));
  }
  // Dispatch.
  std::vector<std::vector<label>> tokens(static_cast<std::size_t>(ranks)), buffers;
  std::vector<std::vector<std::int64_t>> sends, receives;
  for (std::int32_t q = 0; q < ranks; ++q) {
    const auto& plan = plans[static_cast<std::size_t>(q)];
    for (std::int64_t r = 0; r < plan.token_rows; ++r)
      tokens[static_cast<std::size_t>(q)].emplace_back(q, r);
    buffers.push_back(reorder(tokens[static_cast<std::size_t>(q)], plan.send_source));
    sends.push_back(plan.send_rows);
    receives.push_back(plan.receive_rows);
  }
  const auto arrived = all_to_all(buffers, sends);
  std::vector<std::vector<label>> expert_side;
  for (std::int32_t p = 0; p < ranks; ++p) {
    const auto& plan = plans[static_cast<std::size_t>(p)];
    ASSERT_EQ(static_cast<std::int64_t>(arrived[static_cast<std::size_t>(p)].size()),
              plan.received_rows);
    expert_side.push_back(reorder(arrived[static_cast<std::size_t>(p)], plan.receive_source));
    // What rank p must hold: for each of its experts, each source's rows of it in row order.
    std::vector<label> expected;
    const auto& mine = layout.experts_of(p);
    for (std::size_t j = 0; j < mine.size(); ++j) {
      std::int64_t rows = 0;
      for (std::int32_t q = 0; q < ranks; ++q) {
        const auto& c = counts[static_cast<std::size_t>(q)];
        const std::int64_t first = std::accumulate(c.begin(), c.begin() + mine[j], std::int64_t{0});
        for (std::int64_t i = 0; i < c[static_cast<std::size_t>(mine[j])]; ++i)
          expected.emplace_back(q, first + i);
        rows += c[static_cast<std::size_t>(mine[j])];
      }
      EXPECT_EQ(plan.expert_rows[j], rows) << "rank " << p << " expert " << mine[j];
    }
    EXPECT_EQ(expert_side.back(), expected) << "rank " << p;
  }
  // Combine: back along the same routes.
  std::vector<std::vector<label>> back_buffers;
  for (std::int32_t p = 0; p < ranks; ++p)
    back_buffers.push_back(reorder(expert_side[static_cast<std::size_t>(p)],
                                   plans[static_cast<std::size_t>(p)].combine_send_source));
  const auto returned = all_to_all(back_buffers, receives);
  for (std::int32_t q = 0; q < ranks; ++q)
    EXPECT_EQ(reorder(returned[static_cast<std::size_t>(q)],
                      plans[static_cast<std::size_t>(q)].combine_receive_source),
              tokens[static_cast<std::size_t>(q)])
        << "rank " << q;
}

TEST(ExpertExchangePlan, RowsReachTheirExpertsAndComeBack) {
  std::mt19937 random(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int ranks = 1 + static_cast<int>(random() % 6);
    const std::int64_t experts = 1 + static_cast<std::int64_t>(random() % 13);
    std::vector<std::vector<std::int64_t>> placed(static_cast<std::size_t>(ranks));
    for (std::int64_t e = 0; e < experts; ++e)
      placed[trial % 3 == 0 ? static_cast<std::size_t>(e * ranks / experts)  // contiguous
                            : random() % static_cast<unsigned>(ranks)]
          .push_back(e);
    const expert_rank_layout layout(placed, experts);
    std::vector<std::vector<std::int64_t>> counts(static_cast<std::size_t>(ranks));
    for (auto& c : counts)
      for (std::int64_t e = 0; e < experts; ++e)
        c.push_back(random() % 4 == 0 ? 0 : static_cast<std::int64_t>(random() % 9));
    SCOPED_TRACE(testing::Message()
                 << "trial " << trial << ": " << ranks << " ranks, " << experts << " experts");
    check_round_trip(layout, counts);
    if (testing::Test::HasFailure()) return;
  }
}

TEST(ExpertExchangePlan, ContiguousExpertsNeedNoReorderingOnTheTokenSide) {
  const expert_rank_layout layout({{0, 1}, {2, 3}}, 4);
  const std::vector<std::int64_t> counts{1, 2, 2, 5};
  // What rank 0 (itself) and rank 1 send rank 0: their rows of experts 0 and 1.
  const auto plan = plan_exchange(layout, 0, counts, {{1, 2}, {1, 1}});
  EXPECT_TRUE(plan.send_source.empty());
  EXPECT_TRUE(plan.combine_receive_source.empty());
  EXPECT_EQ(plan.send_rows, (std::vector<std::int64_t>{3, 7}));
  EXPECT_EQ(plan.receive_rows, (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(plan.expert_rows, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(plan.rows_to_others(), 7);
  // The buffer: rank 0's expert 0 (row 0) and expert 1 (rows 1-2), rank 1's expert 0 (row 3) and
  // expert 1 (row 4). Expert by expert: 0, 3, then 1, 2, 4.
  EXPECT_EQ(plan.receive_source, (std::vector<std::int64_t>{0, 3, 1, 2, 4}));
  EXPECT_EQ(plan.combine_send_source, (std::vector<std::int64_t>{0, 2, 3, 1, 4}));
}

TEST(ExpertExchangePlan, MalformedLayoutsAndCountsAreRefusedByName) {
  auto refused = [](auto make, const std::string& words) {
    try {
      make();
      ADD_FAILURE() << "accepted; expected: " << words;
    } catch (const troupe::error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  refused([] { expert_rank_layout({{0, 1}, {1, 2}}, 3); }, "expert 1 is on rank 0 and on rank 1");
  refused([] { expert_rank_layout({{0}, {2}}, 3); }, "expert 1 is on no rank");
  refused([] { expert_rank_layout({{0, 3}}, 3); }, "rank 0 holds expert 3");
  refused([] { expert_rank_layout({{1, 0}}, 2); }, "not ascending");
  const expert_rank_layout layout({{0}, {1, 2}}, 3);
  refused(
      [&] {
        plan_exchange(layout, 0, std::vector<std::int64_t>{1, -2, 0}, {{1, 0}, {0, 0}});
      },
      "expert 1 has -2 rows");
  refused(
      [&] {
        plan_exchange(layout, 0, std::vector<std::int64_t>{1, 0, 0}, {{1, 0}, {0}});
      },
      "rank 1 sent 1 counts");
  refused(
      [&] {
        plan_exchange(layout, 0, std::vector<std::int64_t>{1, 0, 0}, {{1, 0}, {0, 4}});
      },
      "rank 1 sends 4 rows for this rank's expert slot 1");
  refused(
      [&] {
        plan_exchange(layout, 0, std::vector<std::int64_t>{1, 0}, {{1, 0}, {0, 0}});
      },
      "2 row counts for a layer of 3 experts");
}

}  // namespace
