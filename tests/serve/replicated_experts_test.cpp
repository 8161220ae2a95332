// Serving with expert parallelism and DeepSeek's redundant experts (runtime/experts/
// replicated_experts.hpp) on a transformers fixture (8 routed experts): 2 shards with 2 redundant
// copies place every expert at least once, re-placing for a skewed load gives the heaviest
// experts the copies and lowers the shards' imbalance, and requests from several threads while the
// experts are re-placed between every two steps get exactly the tokens each gets alone from the
// whole model.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include <prometheus/registry.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/serve/serving_engine.hpp"
#include "tests/support/fixture_model.hpp"

namespace {

using namespace troupe;

/// The fixture with its routed experts on replicated shards.
struct sharded_served_model {
  explicit sharded_served_model(replicated_experts_options options)
      : checkpoint(hf_checkpoint::open(troupe::testing::fixture_model("q-lora"))),
        plugins(load_model_plugins(registry, checkpoint.config())),
        pool(2),
        context(device::cpu(), pool),
        experts(
            checkpoint.config(), plugins.moe, plugins.moe_options, options,
            [this](parameter_store& store) { load_parameters(checkpoint, store); }, context),
        runner(checkpoint.config(), {}, with_experts(plugins, experts), {}),
        model(runner) {
    load_parameters(checkpoint, runner.parameters());
  }
  static model_plugins with_experts(model_plugins p, replicated_experts& e) {
    p.experts = &e.backend();
    return p;
  }
  hf_checkpoint checkpoint;
  plugin_registry registry;
  model_plugins plugins;
  thread_pool pool;
  exec_context context;
  replicated_experts experts;
  model_runner runner;
  cached_model model;
};

generation_request request_for(int i) {
  generation_request r;
  r.prompt = troupe::testing::random_tokens(3 + i % 5, 96, 200 + static_cast<unsigned>(i));
  r.max_new_tokens = 4 + i % 7;
  if (i % 3 == 1) r.sampling = {0.9f, 20, 0.95f, static_cast<std::uint64_t>(i)};
  return r;
}

int copies_of(const expert_placement& p, std::int64_t layer, std::int64_t expert) {
  int n = 0;
  for (const auto& ids : p.layers.at(layer))
    n += static_cast<int>(std::count(ids.begin(), ids.end(), expert));
  return n;
}

TEST(ReplicatedExperts, TheHeaviestExpertsGetTheCopies) {
  replicated_experts_options options;
  options.shards = 2;
  options.redundant = 2;
  options.interval = 0;
  sharded_served_model m(options);
  const expert_placement& first = m.experts.placement();
  first.check(8, true);
  for (const auto& [layer, lists] : first.layers) {
    EXPECT_EQ(lists.size(), 2u);
    for (std::int64_t e = 0; e < 8; ++e) EXPECT_GE(copies_of(first, layer, e), 1) << e;
  }
  // Experts 6 and 7 take most tokens of layer 1.
  const layer_expert_load load{{1, {10, 10, 10, 10, 10, 10, 400, 300}}};
  const double before = first.imbalance(1, load.at(1));
  const replacement_report report = m.experts.rebalance(load);
  EXPECT_TRUE(report.changed);
  EXPECT_GT(report.bytes, 0);
  const expert_placement& next = m.experts.placement();
  EXPECT_EQ(copies_of(next, 1, 6), 2);
  EXPECT_EQ(copies_of(next, 1, 7), 2);
  EXPECT_LT(next.imbalance(1, load.at(1)), before);
  EXPECT_EQ(next.layers.at(2), first.layers.at(2)) << "a layer without load stays";
  EXPECT_EQ(m.experts.replacements(), 1);
  EXPECT_FALSE(m.experts.rebalance(load).changed) << "balanced already";
}

TEST(ReplicatedExperts, ExpertsStayWhileAMoeSwapIsPrepared) {
  replicated_experts_options options;
  options.shards = 2;
  options.redundant = 2;
  options.interval = 1e-9;  // due at every step
  sharded_served_model m(options);
  const layer_expert_load load{{1, {10, 10, 10, 10, 10, 10, 400, 300}}};
  const expert_placement before = m.experts.placement();
  EXPECT_EQ(m.experts.prepare_swap(m.plugins.moe, "the same moe"), 2);
  // A swap's successors are built for the shards as they are: nothing moves until it ends.
  try {
    m.experts.rebalance(load);
    ADD_FAILURE() << "a re-placement while a swap is prepared";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("while a moe swap is prepared"), std::string::npos)
        << e.what();
  }
  m.experts.after_step(load);
  EXPECT_EQ(m.experts.placement(), before) << "the interval's re-placement waits too";
  m.experts.abort_swap();
  EXPECT_TRUE(m.experts.rebalance(load).changed);
}

TEST(ReplicatedExperts, ShapesThatCannotBePlacedAreRefused) {
  replicated_experts_options options;
  options.shards = 3;  // 8 + 0 slots over 3 shards
  EXPECT_THROW(sharded_served_model m(options), troupe::error);
  options.redundant = 1;  // 9 slots: 3 each
  EXPECT_NO_THROW(sharded_served_model m(options));
}

TEST(ReplicatedExperts, RequestsKeepTheirTokensWhileExpertsMoveEveryStep) {
  troupe::testing::fixture_runner whole("q-lora");
  cached_model reference(whole.runner);
  latent_cache alone_cache(reference.cache_shape(dtype::f32, 4), 1 << 22, device::cpu());
  std::vector<std::vector<std::int32_t>> alone;
  for (int i = 0; i < 12; ++i)
    alone.push_back(
        generate_sequence(reference, alone_cache, whole.context, request_for(i)).tokens);

  prometheus::Registry registry;
  replicated_experts_options options;
  options.shards = 2;
  options.redundant = 2;
  options.interval = 1e-9;  // a re-placement between every two steps
  options.metrics = &registry;
  sharded_served_model m(options);
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 22, device::cpu());
  serving_options engine_options;
  engine_options.max_batch = 4;
  engine_options.prefill_chunk = 3;
  engine_options.after_step = [&](const layer_expert_load& load) { m.experts.after_step(load); };
  std::vector<std::vector<std::int32_t>> results(12);
  {
    serving_engine engine(m.model, cache, m.context, engine_options);
    std::vector<std::thread> clients;
    for (int c = 0; c < 4; ++c)
      clients.emplace_back([&, c] {
        for (int i = c; i < 12; i += 4)
          results[static_cast<std::size_t>(i)] = engine.submit(request_for(i)).get().tokens;
      });
    for (auto& t : clients) t.join();
  }
  for (int i = 0; i < 12; ++i)
    EXPECT_EQ(results[static_cast<std::size_t>(i)], alone[static_cast<std::size_t>(i)]) << i;
  EXPECT_GT(m.experts.replacements(), 0) << "the experts never moved";
  bool replicated = false;
  for (const auto& [layer, lists] : m.experts.placement().layers)
    for (std::int64_t e = 0; e < 8; ++e)
      replicated |= copies_of(m.experts.placement(), layer, e) > 1;
  EXPECT_TRUE(replicated) << nlohmann::json(m.experts.placement().layers).dump();
  bool exported = false;
  for (const auto& family : registry.Collect())
    exported |= family.name == "troupe_expert_replicas" && !family.metric.empty();
  EXPECT_TRUE(exported);
}

}  // namespace
