// Schedule plans: every micro-batch goes forward and backward through every stage exactly once,
// on the rank that holds that stage's copy, and played out on unit costs the bubble equals the
// formula of the schedule's analysis: 1F1B (PP-1)(F+B), DualPipe (PP/2-1)(F&B+B-3W) (DeepSeek's
// DualPipe table), sequential N(PP-1)(F+B). Exact comparisons: the costs are small integers and
// halves. DualPipe's formula assumes, as zero-bubble analyses do, that the input-gradient part of
// a backward costs what a forward does (F = B - W); it is then exact, and an upper bound when the
// input part is longer.
#include <gtest/gtest.h>

#include <map>

#include "runtime/core/error.hpp"
#include "runtime/schedule/schedule_plan.hpp"
#include "runtime/schedule/timeline.hpp"

namespace {

using namespace troupe;

/// Every (stage, micro-batch) has one forward and one backward (full, or input then weight, in
/// that order) on the right rank.
void expect_complete(const schedule_plan& plan) {
  std::map<std::pair<std::int32_t, std::int64_t>, std::string> seen;
  for (std::int32_t rank = 0; rank < plan.ranks(); ++rank)
    for (const pipeline_op& op : plan.ops(rank)) {
      auto note = [&](const stage_work& w, const char* what) {
        EXPECT_EQ(plan.rank_of(w.stage, w.micro_batch), rank) << describe(op);
        EXPECT_EQ(plan.copy_of(w.micro_batch), w.copy) << describe(op);
        seen[{w.stage, w.micro_batch}] += what;
      };
      switch (op.kind) {
        case op_kind::forward:
          note(op.work, "F");
          break;
        case op_kind::backward:
          note(op.work, "B");
          break;
        case op_kind::backward_input:
          note(op.work, "b");
          break;
        case op_kind::backward_weight:
          note(op.work, "W");
          break;
        case op_kind::forward_backward:
          note(op.work, "F");
          note(op.backward_work, "B");
          break;
      }
    }
  for (std::int32_t s = 0; s < plan.stages(); ++s)
    for (std::int64_t m = 0; m < plan.micro_batches(); ++m) {
      const std::string& what = seen[{s, m}];
      EXPECT_TRUE(what == "FB" || what == "FbW")
          << to_string(plan.kind()) << " stage " << s << " micro-batch " << m << ": " << what;
    }
}

// F, B, W, F&B; the first four have F = B - W.
const std::vector<op_costs> cost_sets = {{1, 2, 1, 3},     {1, 2, 1, 2.5}, {2, 3, 1, 4},
                                         {1.5, 2, 0.5, 3}, {1, 3, 1, 3.5}, {0.5, 2, 1, 2.5}};

TEST(Schedule, OneFOneBBubbleIsPpMinusOneTimesFPlusB) {
  for (std::int32_t pp : {1, 2, 3, 4, 8})
    for (std::int64_t n : {std::int64_t{pp}, std::int64_t{2 * pp}, std::int64_t{3 * pp + 1}})
      for (const op_costs& c : cost_sets) {
        const auto plan = schedule_plan::build(schedule_kind::one_f_one_b, pp, n);
        expect_complete(plan);
        const timeline t = simulate(plan, c);
        EXPECT_EQ(t.max_bubble(), predicted_bubble(plan, c)) << "PP " << pp << " N " << n;
        EXPECT_EQ(t.max_bubble(), (pp - 1) * (c.forward + c.backward));
      }
}

TEST(Schedule, DualPipeBubbleMatchesDeepSeeksTable) {
  for (std::int32_t pp : {2, 4, 6, 8})
    for (std::int64_t n : {std::int64_t{2 * pp}, std::int64_t{2 * pp + 2}, std::int64_t{20}}) {
      if (n < 2 * pp) continue;
      for (const op_costs& c : cost_sets) {
        const auto plan = schedule_plan::build(schedule_kind::dualpipe, pp, n);
        expect_complete(plan);
        const timeline t = simulate(plan, c);
        const double formula = (pp / 2.0 - 1.0) * (c.forward_backward + c.backward - 3 * c.weight);
        EXPECT_EQ(formula, predicted_bubble(plan, c));
        if (c.forward == c.backward - c.weight)
          EXPECT_EQ(t.max_bubble(), formula)
              << "PP " << pp << " N " << n << " F " << c.forward << " B " << c.backward << " W "
              << c.weight << " F&B " << c.forward_backward;
        else
          EXPECT_LE(t.max_bubble(), formula) << "PP " << pp << " N " << n;
      }
    }
}

TEST(Schedule, SequentialRunsOneMicroBatchAtATime) {
  for (std::int32_t pp : {1, 2, 4}) {
    const auto plan = schedule_plan::build(schedule_kind::sequential, pp, 3);
    expect_complete(plan);
    const op_costs c{1, 2, 1, 3};
    const timeline t = simulate(plan, c);
    EXPECT_EQ(t.makespan, 3 * pp * 3.0);
    EXPECT_EQ(t.max_bubble(), predicted_bubble(plan, c));
  }
}

TEST(Schedule, DualPipeHoldsEachStageTwiceAndSplitsTheMicroBatches) {
  const auto plan = schedule_plan::build(schedule_kind::dualpipe, 4, 8);
  EXPECT_EQ(plan.copies(), 2);
  EXPECT_EQ(plan.chunks(0), (std::vector<std::pair<std::int32_t, std::int32_t>>{{0, 0}, {3, 1}}));
  EXPECT_EQ(plan.chunks(3), (std::vector<std::pair<std::int32_t, std::int32_t>>{{3, 0}, {0, 1}}));
  EXPECT_EQ(plan.rank_of(0, 0), 0);  // the first half enters at rank 0 ...
  EXPECT_EQ(plan.rank_of(0, 4), 3);  // ... the second half at rank 3
  EXPECT_EQ(plan.rank_of(3, 7), 0);
  // Weight parts are deferred somewhere, and every deferred part is run.
  bool deferred = false;
  for (std::int32_t r = 0; r < 4; ++r)
    for (const auto& op : plan.ops(r)) deferred |= op.kind == op_kind::backward_input;
  EXPECT_TRUE(deferred);
}

TEST(Schedule, DualPipeConstraintsAreClearErrors) {
  auto message = [](std::int32_t pp, std::int64_t n) {
    try {
      schedule_plan::build(schedule_kind::dualpipe, pp, n);
    } catch (const troupe::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(3, 6), "dualpipe needs an even number of pipeline stages, got 3");
  EXPECT_EQ(message(4, 7),
            "dualpipe needs an even number of micro-batches of at least 2 x 4 stages = 8, got 7");
  EXPECT_EQ(message(4, 6),
            "dualpipe needs an even number of micro-batches of at least 2 x 4 stages = 8, got 6");
  EXPECT_THROW(parse_schedule_kind("gpipe"), troupe::error);
}

// A plan is bounded before it is built (found by fuzzing the message codec: 4,096 stages of
// 2^20 micro-batches took minutes and gigabytes to build).
TEST(Schedule, APlanBeyondItsBoundIsRefusedBeforeItIsBuilt) {
  try {
    schedule_plan::build(schedule_kind::sequential, 4096, std::int64_t{1} << 20);
    ADD_FAILURE() << "no error";
  } catch (const troupe::error& e) {
    EXPECT_EQ(std::string(e.what()),
              "4096 stages x 1048576 micro-batches is more than a plan holds (1048576 pairs)");
  }
  EXPECT_NO_THROW(schedule_plan::build(schedule_kind::sequential, 16, 65536));
}

TEST(Schedule, TheTextTimelineShowsEveryUnitOfWork) {
  const auto plan = schedule_plan::build(schedule_kind::one_f_one_b, 2, 2);
  const std::string text = render_timeline(simulate(plan, {1, 2, 1, 3}));
  EXPECT_EQ(text,
            "rank  0 | F0 F1 .  .  B0 B0 .  B1 B1 | busy 6, bubble 3\n"
            "rank  1 | .  F0 B0 B0 F1 B1 B1 .  .  | busy 6, bubble 3\n");
}

}  // namespace
