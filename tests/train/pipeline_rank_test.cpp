// Pipeline ranks without actors: every schedule's plan, run by a local driver that hands each
// transfer to its rank, gives the losses and, parameter by parameter, the gradients of the
// sequential schedule to 1e-6 relative (FP32; DualPipe sums its two copies of each stage).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "runtime/exec/exec_context.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/stage/pipeline_rank.hpp"
#include "tests/support/fixtures.hpp"

namespace {

using namespace troupe;

struct pipeline_run {
  std::vector<double> losses;                        // per micro-batch: loss + mtp + balance
  std::map<std::string, std::vector<double>> grads;  // summed over the copies holding a name
};

pipeline_run run_plan(schedule_kind kind, int stages, int micro_batches) {
  const model_config config =
      load_model_config(troupe::testing::source_dir() / "topologies/models/tiny/config.json");
  plugin_registry registry;
  const model_plugins plugins = load_model_plugins(registry, config);
  thread_pool pool(2);
  exec_context context(device::cpu(), pool);
  const auto plan =
      std::make_shared<const schedule_plan>(schedule_plan::build(kind, stages, micro_batches));

  std::vector<std::unique_ptr<pipeline_rank>> ranks;
  const int per_stage = static_cast<int>(config.num_hidden_layers) / stages;
  for (int r = 0; r < stages; ++r) {
    std::vector<stage_chunk> chunks;
    for (auto [stage, copy] : plan->chunks(r)) {
      stage_chunk chunk;
      chunk.stage = stage;
      chunk.copy = copy;
      chunk.runner = std::make_unique<model_runner>(
          config,
          model_slice{stage * per_stage, (stage + 1) * per_stage, stage == 0, stage == stages - 1},
          plugins);
      chunk.runner->parameters().initialize(11);
      chunks.push_back(std::move(chunk));
    }
    ranks.push_back(std::make_unique<pipeline_rank>(r, std::move(chunks), context));
  }
  std::mt19937 rng(5);
  std::uniform_int_distribution<std::int32_t> token(0, 255);
  std::vector<micro_batch_input> inputs;
  for (int m = 0; m < micro_batches; ++m) {
    micro_batch_input in{tensor::empty(dtype::i32, {2, 16}), tensor::empty(dtype::i32, {2, 16})};
    for (int i = 0; i < 32; ++i) {
      in.tokens.data_as<std::int32_t>()[i] = token(rng);
      in.targets.data_as<std::int32_t>()[i] = token(rng);
    }
    inputs.push_back(in);
  }
  for (auto& rank : ranks) rank->begin_step(plan, inputs, 1.0f / static_cast<float>(micro_batches));
  // Round-robin until every rank is done; a round that moves nothing would be a deadlock.
  for (bool all_done = false; !all_done;) {
    all_done = true;
    bool progressed = false;
    for (auto& rank : ranks) {
      for (auto& [to, transfer] : rank->advance()) {
        ranks[static_cast<std::size_t>(to)]->deliver(std::move(transfer));
        progressed = true;
      }
      all_done = all_done && rank->finished();
    }
    if (!all_done && !progressed) {
      ADD_FAILURE() << "the plan deadlocked";
      break;
    }
  }
  pipeline_run run;
  run.losses.assign(static_cast<std::size_t>(micro_batches), 0.0);
  for (auto& rank : ranks) {
    for (const auto& l : rank->take_report().losses)
      run.losses[static_cast<std::size_t>(l.micro_batch)] += l.loss + l.mtp_loss + l.balance_loss;
    for (auto& chunk : rank->chunks())
      for (parameter* p : chunk.runner->parameters().all()) {
        if (!p->spec.trainable()) continue;
        auto& g = run.grads[p->name];
        g.resize(static_cast<std::size_t>(p->grad.numel()), 0.0);
        for (std::int64_t i = 0; i < p->grad.numel(); ++i)
          g[static_cast<std::size_t>(i)] += static_cast<double>(p->grad.data_as<float>()[i]);
      }
  }
  return run;
}

void expect_same(const pipeline_run& a, const pipeline_run& b, const std::string& what) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (std::size_t m = 0; m < a.losses.size(); ++m)
    EXPECT_LE(std::abs(a.losses[m] - b.losses[m]), 1e-6 * std::abs(b.losses[m]))
        << what << " mb " << m;
  ASSERT_EQ(a.grads.size(), b.grads.size()) << what;
  for (const auto& [name, expected] : b.grads) {
    const auto& got = a.grads.at(name);
    double norm = 0.0, diff = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      norm += expected[i] * expected[i];
      diff += (got[i] - expected[i]) * (got[i] - expected[i]);
    }
    EXPECT_LE(std::sqrt(diff), 1e-6 * std::sqrt(norm) + 1e-12) << what << ": " << name;
  }
}

TEST(PipelineRank, EveryScheduleGivesTheLossesAndGradientsOfSequential) {
  for (int stages : {2, 4}) {
    const int micro_batches = 2 * stages;
    const auto sequential = run_plan(schedule_kind::sequential, stages, micro_batches);
    expect_same(run_plan(schedule_kind::one_f_one_b, stages, micro_batches), sequential,
                "1f1b, " + std::to_string(stages) + " stages");
    expect_same(run_plan(schedule_kind::dualpipe, stages, micro_batches), sequential,
                "dualpipe, " + std::to_string(stages) + " stages");
  }
}

}  // namespace
