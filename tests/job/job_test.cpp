// A second kind of job from the job's pieces, without the training coordinator: a process's share
// of a job (runtime/job/job_process.hpp), pipeline stages running forward only, expert shards, the
// bias balancer and a hot swap, driven by a loop of a few lines (what a serving job will do).
// And the stages' failure discipline: a rank whose step fails fails its peers' steps too, so the
// step fails at once instead of hanging; a lost process fails every later step.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

#include "runtime/balancer/balancer_actor.hpp"
#include "runtime/balancer/balancer_messages.hpp"
#include "runtime/experts/expert_shard_actor.hpp"
#include "runtime/job/holder_messages.hpp"
#include "runtime/job/hot_swap.hpp"
#include "runtime/job/job_process.hpp"
#include "runtime/stage/stage_actor.hpp"
#include "runtime/topology/load.hpp"
#include "tests/support/fixtures.hpp"

namespace troupe {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

/// The actors of a small serving-like job on the shipped pp2-ep4 topology: 2 stages, 4 shards.
struct forward_job {
  topology topo;
  plugin_registry registry;
  std::unique_ptr<job_process> process;
  model_plugins plugins;
  std::vector<std::shared_ptr<stage_actor_setup>> stages;
  named_actors stage_actors, shard_actors;
  actor_ref balancer;
  std::shared_ptr<const schedule_plan> plan;

  forward_job() {
    topo = load_topology(troupe::testing::source_dir() / "topologies/pp2-ep4.toml").topo;
    job_process_options options;
    options.threads = 2;
    process = std::make_unique<job_process>(topo, registry, options);
    plugins = load_model_plugins(registry, topo.model);
    std::vector<std::vector<std::int64_t>> experts;
    for (const auto& shard : topo.expert_shards)
      experts.emplace_back(shard.experts.begin(), shard.experts.end());
    for (std::size_t s = 0; s < experts.size(); ++s) {
      auto setup = std::make_shared<shard_actor_setup>();
      setup->shard = std::make_unique<expert_shard>(topo.model, plugins.moe, experts[s]);
      setup->shard->parameters().initialize(7);
      setup->optimizer = std::make_unique<adamw>(adamw_settings{});
      setup->context = &process->context();
      setup->plugins = process->plugins();
      shard_actors.emplace_back(fmt::format("shard{}", s),
                                spawn_expert_shard_actor(process->runtime(), setup));
    }
    plan = std::make_shared<const schedule_plan>(
        schedule_plan::build(schedule_kind::one_f_one_b, topo.pipeline, 2));
    for (std::int32_t r = 0; r < topo.pipeline; ++r) {
      auto setup = std::make_shared<stage_actor_setup>();
      setup->plugins = process->plugins();
      setup->transport = std::make_unique<actor_expert_transport>(process->runtime());
      std::vector<actor_ref> shard_handles;
      for (const auto& [name, actor] : shard_actors) shard_handles.push_back(actor);
      setup->transport->set_shards(shard_handles);
      stage_chunk chunk;
      chunk.stage = r;
      const auto& layers = topo.stages[static_cast<std::size_t>(r)].layers;
      chunk.experts = std::make_unique<sharded_experts>(
          experts, topo.model.n_routed_experts, *setup->transport, sharded_experts::options{});
      model_plugins chunk_plugins = plugins;
      chunk_plugins.experts = chunk.experts.get();
      chunk.runner = std::make_unique<model_runner>(
          topo.model,
          model_slice{layers.front(), layers.back() + 1, r == 0, r == topo.pipeline - 1},
          chunk_plugins);
      chunk.runner->parameters().initialize(7);
      std::vector<stage_chunk> chunks;
      chunks.push_back(std::move(chunk));
      setup->rank = std::make_unique<pipeline_rank>(r, std::move(chunks), process->context());
      stages.push_back(setup);
      stage_actors.emplace_back(fmt::format("stage{}", r),
                                spawn_stage_actor(process->runtime(), setup));
    }
    stage_peers peers;
    for (const auto& [name, actor] : stage_actors) peers.peers.push_back(actor);
    for (const auto& [name, actor] : stage_actors) process->runtime().tell(actor, peers);
    balancer = spawn_balancer_actor(
        process->runtime(), std::make_shared<bias_balancer>(balancer_settings{0.01, false},
                                                            std::vector<std::int64_t>{1, 2, 3, 4},
                                                            topo.model.n_routed_experts));
  }

  ~forward_job() {
    scoped_actor self(process->runtime());
    for (const auto& [name, actor] : stage_actors) self.ask(actor, stop_request{}, name, 30s);
    for (const auto& [name, actor] : stage_actors) process->runtime().stop(actor);
    for (const auto& [name, actor] : shard_actors) process->runtime().stop(actor);
    process->runtime().stop(balancer);
  }

  /// One forward-only step of two micro-batches: every stage's report, in rank order.
  std::vector<rank_step_report> forward(blocking_actor& self, std::int64_t step) {
    std::vector<micro_batch_input> inputs;
    for (int m = 0; m < 2; ++m) {
      micro_batch_input in{tensor::empty(dtype::i32, {2, 16}), tensor::empty(dtype::i32, {2, 16})};
      for (int i = 0; i < 32; ++i) {
        in.tokens.data_as<std::int32_t>()[i] = (i * 7 + m * 13) % 256;
        in.targets.data_as<std::int32_t>()[i] = (i * 5 + m * 11 + 1) % 256;
      }
      inputs.push_back(in);
    }
    std::vector<rank_step_report> reports;
    self.ask_each(
        fmt::format("forward {}", step), stage_actors,
        [&](const std::string&) {
          return step_order{step, plan, inputs, 0.5f, true};
        },
        [&](const std::string&, rank_step_report& report) { reports.push_back(report); }, 60s);
    return reports;
  }
};

double head_loss(const std::vector<rank_step_report>& reports) {
  double loss = 0.0;
  for (const auto& l : reports.back().losses) loss += l.loss;
  return loss;
}

TEST(SecondKindOfJob, ForwardOnlyStagesExpertShardsBalancerAndAHotSwapWithoutTheCoordinator) {
  forward_job job;
  scoped_actor self(job.process->runtime());
  const auto first = job.forward(self, 0);
  ASSERT_EQ(first.size(), 2u);
  ASSERT_EQ(first.back().losses.size(), 2u) << "the head reports both micro-batches";
  EXPECT_TRUE(std::isfinite(head_loss(first)));
  EXPECT_GT(head_loss(first), 0.0);
  // Every token of every micro-batch reached its top-k experts in every MoE layer.
  std::int64_t routed = 0;
  expert_load load;
  for (const auto& report : first)
    for (const auto& [layer, counts] : report.load) {
      for (std::size_t e = 0; e < counts.size(); ++e) {
        routed += counts[e];
        load[layer].resize(counts.size());
        load[layer][e] += counts[e];
      }
    }
  EXPECT_EQ(routed,
            2 * 32 * job.topo.model.num_experts_per_tok * static_cast<std::int64_t>(load.size()));

  // A forward keeps nothing: the same step again gives the same losses, bit for bit.
  EXPECT_EQ(head_loss(job.forward(self, 1)), head_loss(first));

  // A hot swap of the moe plugin (an identical build) on every holder, then the same forward.
  named_actors holders = job.stage_actors;
  holders.insert(holders.end(), job.shard_actors.begin(), job.shard_actors.end());
  const auto moe = job.plugins.moe->file;
  const std::int64_t replaced =
      swap_everywhere(self, holders, plugin_swap_order{plugin_kind::moe, moe.string(), 1});
  EXPECT_GT(replaced, 0);
  EXPECT_EQ(head_loss(job.forward(self, 2)), head_loss(first)) << "the swap changed the model";

  // The balancer takes the load and hands every stage its new biases before it answers.
  std::vector<actor_ref> stage_handles;
  for (const auto& [name, actor] : job.stage_actors) stage_handles.push_back(actor);
  const router_biases biases =
      self.ask(job.balancer, balance_request{load, stage_handles}, "balancer", 30s);
  ASSERT_EQ(biases.values.size(), load.size());
  for (const auto& setup : job.stages)
    for (const auto& chunk : setup->rank->chunks())
      for (parameter* p : chunk.runner->parameters().all())
        if (p->spec.router_bias()) {
          const auto& expected = biases.values.at(p->layer);
          EXPECT_TRUE(std::equal(expected.begin(), expected.end(), p->value.data_as<float>()))
              << p->name;
        }
  EXPECT_NE(head_loss(job.forward(self, 3)), head_loss(first)) << "the new biases route anew";
}

TEST(SecondKindOfJob, TheBuiltInGemmInBf16IsRefusedEverywhereByStagesOnTheCpu) {
  forward_job job;
  scoped_actor self(job.process->runtime());
  const double first = head_loss(job.forward(self, 0));
  named_actors holders = job.stage_actors;
  holders.insert(holders.end(), job.shard_actors.begin(), job.shard_actors.end());

  // The order carries the built-in's precision to every holder: ranks on the CPU have no BF16
  // GEMM and refuse it, so every holder drops what it prepared and nothing changes.
  try {
    swap_everywhere(self, holders, plugin_swap_order{plugin_kind::gemm, "", 1, precision::bf16});
    FAIL() << "CPU stages must refuse the built-in bf16 GEMM";
  } catch (const swap_refused& e) {
    EXPECT_EQ(e.why(), swap_refused::reason::failed);
    EXPECT_THAT(e.what(), HasSubstr("computes on the CPU, which has no BF16 GEMM: the built-in "
                                    "bf16 GEMM runs on GPU stages only"));
  }
  // A precision the runtime has no GEMM of (a malformed order) is refused as well.
  EXPECT_THROW(
      swap_everywhere(self, holders, plugin_swap_order{plugin_kind::gemm, "", 2, precision::fp8}),
      swap_refused);
  for (const auto& setup : job.stages) EXPECT_EQ(setup->rank->builtin_gemm(), precision::fp32);
  EXPECT_EQ(head_loss(job.forward(self, 1)), first) << "a refused swap changed the model";

  // The built-in FP32 GEMM, which the job already runs: one provider for the process, the same
  // losses bit for bit.
  EXPECT_EQ(
      swap_everywhere(self, holders, plugin_swap_order{plugin_kind::gemm, "", 3, precision::fp32}),
      1);
  for (const auto& setup : job.stages) EXPECT_EQ(setup->rank->builtin_gemm(), precision::fp32);
  EXPECT_EQ(head_loss(job.forward(self, 2)), first);
}

TEST(Stages, APeerFailureFailsTheStepAtOnceInsteadOfHanging) {
  forward_job job;
  scoped_actor self(job.process->runtime());
  // Rank 1 gets no micro-batches: it fails on the first activation rank 0 sends it, while rank
  // 0 would wait for its gradients for ever.
  std::vector<micro_batch_input> inputs;
  for (int m = 0; m < 2; ++m)
    inputs.push_back({tensor::zeros(dtype::i32, {1, 8}), tensor::zeros(dtype::i32, {1, 8})});
  try {
    self.ask_each(
        "step 1", job.stage_actors,
        [&](const std::string& name) {
          return step_order{0, job.plan,
                            name == "stage0" ? inputs : std::vector<micro_batch_input>{}, 0.5f,
                            false};
        },
        [](const std::string&, rank_step_report&) {}, 60s);
    FAIL() << "the step must fail";
  } catch (const error& e) {
    EXPECT_THAT(e.what(), HasSubstr("step 1 of stage0: stage rank 1 failed"));
  }
}

TEST(Stages, ALostProcessFailsTheRunningStepAndEveryLaterOne) {
  forward_job job;
  scoped_actor self(job.process->runtime());
  for (const auto& [name, actor] : job.stage_actors)
    job.process->runtime().tell(actor, process_lost{"rank 3 (host node3) is gone"});
  try {
    job.forward(self, 0);
    FAIL() << "the step must fail";
  } catch (const error& e) {
    EXPECT_THAT(e.what(), HasSubstr("rank 3 (host node3) is gone"));
  }
}

}  // namespace
}  // namespace troupe
