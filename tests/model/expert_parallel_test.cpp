// Expert parallelism: a stage that routes and expert shards that compute (through the moe
// plugin's routing and experts parts, runtime/experts) give the bits of the whole moe plugin:
// the same losses, logits and gradients, for 2 and 4 shards, uneven expert lists included. With
// FP8 dispatch and BF16 combine (DeepSeek-V3's wire formats) the result stays within the FP8
// bounds of fp8_test.cpp (logits diff < 5e-3, loss within 1%; measured 3.9e-4 and 0.13% on the
// FP8 fixture, with 38% of the FP32 payload bytes). Two copies of a stage (DualPipe, data
// parallelism) accumulate expert gradients separately and reduce them to what one copy running both
// micro-batches gets. Each layer may place its experts on other shards (a rebalance) and still
// gives the bits; a shard's successor for a new set holds the bits of the weights and AdamW
// moments it kept or was handed, and refuses (naming the tensor) a set it was not given.
#include <gtest/gtest.h>

#include <numeric>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/experts/expert_move.hpp"
#include "runtime/experts/expert_shard.hpp"
#include "runtime/experts/sharded_experts.hpp"
#include "runtime/model/model_runner.hpp"
#include "tests/support/fixtures.hpp"

namespace {

using namespace troupe;

model_batch batch_of(const std::vector<std::int32_t>& tokens, std::int64_t rotate = 0) {
  const auto length = static_cast<std::int64_t>(tokens.size());
  model_batch batch;
  batch.tokens = tensor::empty(dtype::i32, {1, length});
  batch.targets = tensor::empty(dtype::i32, {1, length});
  for (std::int64_t i = 0; i < length; ++i) {
    batch.tokens.data_as<std::int32_t>()[i] =
        tokens[static_cast<std::size_t>((i + rotate) % length)];
    batch.targets.data_as<std::int32_t>()[i] =
        i + 1 < length ? tokens[static_cast<std::size_t>((i + 1 + rotate) % length)] : -1;
  }
  return batch;
}

struct sharded_model {
  sharded_model(const hf_checkpoint& checkpoint, plugin_registry& registry,
                const std::vector<std::vector<std::int64_t>>& experts, const exec_context& context,
                sharded_experts::options settings, int sources = 1) {
    const model_config& config = checkpoint.config();
    model_plugins plugins = load_model_plugins(registry, config);
    std::vector<expert_shard*> pointers;
    for (const auto& ids : experts) {
      shards.push_back(std::make_unique<expert_shard>(config, plugins.moe, ids, sources));
      load_parameters(checkpoint, shards.back()->parameters());
      pointers.push_back(shards.back().get());
    }
    transport = std::make_unique<local_expert_transport>(pointers, context);
    for (int source = 0; source < sources; ++source) {
      settings.source = source;
      backends.push_back(std::make_unique<sharded_experts>(experts, config.n_routed_experts,
                                                           *transport, settings));
      plugins.experts = backends.back().get();
      runners.push_back(std::make_unique<model_runner>(config, model_slice{}, plugins));
      load_parameters(checkpoint, runners.back()->parameters());
    }
  }
  /// The gradient of `name`, from the stage or the shard that holds it.
  const tensor& grad(const std::string& name, int copy = 0) {
    if (parameter* p = runners[static_cast<std::size_t>(copy)]->parameters().find(name))
      return p->grad;
    for (auto& shard : shards)
      if (parameter* p = shard->parameters().find(name)) return p->grad;
    throw std::runtime_error("no parameter " + name);
  }

  std::vector<std::unique_ptr<expert_shard>> shards;
  std::unique_ptr<local_expert_transport> transport;
  std::vector<std::unique_ptr<sharded_experts>> backends;
  std::vector<std::unique_ptr<model_runner>> runners;
};

std::vector<std::int32_t> fixture_tokens(const std::string& name) {
  return troupe::testing::read_json(troupe::testing::fixture_model(name) /
                                    "reference.json")["tokens"]
      .get<std::vector<std::int32_t>>();
}

class ExpertParallel : public ::testing::Test {
 protected:
  thread_pool pool_{2};
  exec_context context_{device::cpu(), pool_};
  plugin_registry registry_;
};

void expect_same_bits(const tensor& a, const tensor& b, const std::string& what) {
  ASSERT_EQ(a.numel(), b.numel()) << what;
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.nbytes())) << what << " differs";
}

TEST_F(ExpertParallel, ShardsGiveTheBitsOfTheWholeLayer) {
  for (const auto& [fixture, split] :
       std::vector<std::pair<std::string, std::vector<std::vector<std::int64_t>>>>{
           {"q-lora", {{0, 1, 2, 3}, {4, 5, 6, 7}}},
           {"groups", {{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}},
           {"groups", {{0, 5, 9}, {1, 2, 3, 4, 6}, {7, 8, 10, 11, 12, 13, 14, 15}}}}) {
    SCOPED_TRACE(fixture + ", " + std::to_string(split.size()) + " shards");
    const auto checkpoint = hf_checkpoint::open(troupe::testing::fixture_model(fixture));
    const model_config& config = checkpoint.config();
    model_runner whole(config, {}, load_model_plugins(registry_, config));
    load_parameters(checkpoint, whole.parameters());
    sharded_model sharded(checkpoint, registry_, split, context_, {});
    const model_batch batch = batch_of(fixture_tokens(fixture));
    const model_output a = whole.forward(context_, 0, batch, true);
    const model_output b = sharded.runners[0]->forward(context_, 0, batch, true);
    EXPECT_EQ(a.loss, b.loss);
    EXPECT_EQ(a.mtp_loss, b.mtp_loss);
    EXPECT_EQ(a.balance_loss, b.balance_loss);
    expect_same_bits(a.logits, b.logits, "logits");
    ASSERT_EQ(a.expert_counts.size(), b.expert_counts.size());
    for (std::size_t i = 0; i < a.expert_counts.size(); ++i)
      expect_same_bits(a.expert_counts[i], b.expert_counts[i], "expert counts");
    whole.backward(context_, 0, tensor(), 0.5f);
    sharded.runners[0]->backward(context_, 0, tensor(), 0.5f);
    for (parameter* p : whole.parameters().all())
      if (p->grad.defined()) expect_same_bits(p->grad, sharded.grad(p->name), p->name);
  }
}

TEST_F(ExpertParallel, Fp8DispatchAndBf16CombineStayWithinTheFp8Bounds) {
  // The FP8 fixture: hidden 160, so rows span a full 1x128 tile and a partial one.
  const auto checkpoint = hf_checkpoint::open(troupe::testing::fixture_model("fp8"));
  const std::vector<std::vector<std::int64_t>> split = {{0, 1}, {2, 3}};
  sharded_model exact(checkpoint, registry_, split, context_, {});
  sharded_model wire(checkpoint, registry_, split, context_,
                     {.dispatch = wire_precision::fp8, .combine = wire_precision::bf16});
  const model_batch batch = batch_of(fixture_tokens("fp8"));
  const model_output a = exact.runners[0]->forward(context_, 0, batch, true);
  const model_output b = wire.runners[0]->forward(context_, 0, batch, true);
  const double logit_diff =
      troupe::testing::diff_metric(b.logits.data_as<float>(), a.logits.data_as<float>(),
                                   static_cast<std::size_t>(a.logits.numel()));
  EXPECT_GT(logit_diff, 0.0) << "the payload was not quantised";
  EXPECT_LT(logit_diff, 5e-3);
  EXPECT_LT(std::fabs(b.loss - a.loss) / a.loss, 1e-2);
  EXPECT_GT(wire.backends[0]->bytes_sent(), 0);
  // FP8 rows are a quarter of the FP32 ones, plus a scale per 128 values.
  exact.runners[0]->backward(context_, 0, tensor(), 1.0f);
  wire.runners[0]->backward(context_, 0, tensor(), 1.0f);
  std::printf(
      "[ ep ] fp8 dispatch + bf16 combine: logits diff %.3g, loss %.6f vs %.6f, %lld "
      "bytes sent (fp32: %lld)\n",
      logit_diff, b.loss, a.loss, static_cast<long long>(wire.backends[0]->bytes_sent()),
      static_cast<long long>(exact.backends[0]->bytes_sent()));
}

TEST_F(ExpertParallel, TwoStageCopiesReduceToOneCopyRunningBoth) {
  const auto checkpoint = hf_checkpoint::open(troupe::testing::fixture_model("groups"));
  const model_config& config = checkpoint.config();
  const std::vector<std::vector<std::int64_t>> split = {{0, 1, 2, 3, 4, 5, 6, 7},
                                                        {8, 9, 10, 11, 12, 13, 14, 15}};
  sharded_model one(checkpoint, registry_, split, context_, {});
  sharded_model two(checkpoint, registry_, split, context_, {}, 2);
  const auto tokens = fixture_tokens("groups");
  const model_batch first = batch_of(tokens), second = batch_of(tokens, 5);
  // One copy: micro-batches 0 and 1. Two copies: copy 1 runs micro-batch 1 (interleaved).
  one.runners[0]->forward(context_, 0, first);
  one.runners[0]->forward(context_, 1, second);
  one.runners[0]->backward(context_, 1, tensor(), 0.5f);
  one.runners[0]->backward(context_, 0, tensor(), 0.5f);
  two.runners[1]->forward(context_, 1, second);
  two.runners[0]->forward(context_, 0, first);
  two.runners[0]->backward(context_, 0, tensor(), 0.5f);
  two.runners[1]->backward(context_, 1, tensor(), 0.5f);
  for (auto& shard : two.shards) shard->reduce_source_gradients();
  for (auto& shard : one.shards)
    for (parameter* p : shard->parameters().all()) {
      const tensor& expected = p->grad;
      const tensor& got = two.grad(p->name);
      EXPECT_LE(troupe::testing::max_relative_error(got.data_as<float>(), expected.data_as<float>(),
                                                    static_cast<std::size_t>(expected.numel())),
                1e-6)
          << p->name;
    }
  (void)config;
}

TEST_F(ExpertParallel, BadExpertListsAreClearErrors) {
  const auto checkpoint = hf_checkpoint::open(troupe::testing::fixture_model("q-lora"));
  const model_config& config = checkpoint.config();
  const auto moe = registry_.load("moe", {plugin_kind::moe});
  local_expert_transport transport({}, context_);
  try {
    sharded_experts backend({{0, 1, 2}, {3, 4, 5, 6}}, config.n_routed_experts, transport, {});
    FAIL() << "expert 7 has no shard";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("expert 7 is owned by 0 shards"), std::string::npos)
        << e.what();
  }
  try {
    expert_shard shard(config, moe, std::vector<std::int64_t>{3, 9});
    FAIL() << "expert 9 does not exist";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("lists expert 9 of"), std::string::npos) << e.what();
  }
}

TEST_F(ExpertParallel, PerLayerPlacementsGiveTheBitsOfTheWholeLayer) {
  const auto checkpoint = hf_checkpoint::open(troupe::testing::fixture_model("groups"));
  const model_config& config = checkpoint.config();
  model_runner whole(config, {}, load_model_plugins(registry_, config));
  load_parameters(checkpoint, whole.parameters());
  // Even layers: experts in order; odd layers: even experts on shard 0, odd on shard 1.
  std::map<std::int64_t, std::vector<std::vector<std::int64_t>>> placement;
  for (std::int64_t l = config.first_k_dense_replace;
       l < config.num_hidden_layers + config.num_nextn_predict_layers; ++l)
    for (std::int64_t e = 0; e < config.n_routed_experts; ++e) {
      auto& lists = placement[l];
      lists.resize(2);
      const bool second = l % 2 == 0 ? e >= config.n_routed_experts / 2 : e % 2 == 1;
      lists[second ? 1 : 0].push_back(e);
    }
  ASSERT_GE(placement.size(), 2u);
  model_plugins plugins = load_model_plugins(registry_, config);
  std::vector<std::unique_ptr<expert_shard>> shards;
  std::vector<expert_shard*> pointers;
  for (std::size_t s = 0; s < 2; ++s) {
    std::map<std::int64_t, std::vector<std::int64_t>> mine;
    for (const auto& [layer, lists] : placement) mine[layer] = lists[s];
    shards.push_back(std::make_unique<expert_shard>(config, plugins.moe, mine));
    load_parameters(checkpoint, shards.back()->parameters());
    pointers.push_back(shards.back().get());
  }
  local_expert_transport transport(pointers, context_);
  sharded_experts backend(placement.begin()->second, config.n_routed_experts, transport, {});
  backend.set_placement(placement);
  plugins.experts = &backend;
  model_runner runner(config, model_slice{}, plugins);
  load_parameters(checkpoint, runner.parameters());
  const model_batch batch = batch_of(fixture_tokens("groups"));
  const model_output a = whole.forward(context_, 0, batch, true);
  const model_output b = runner.forward(context_, 0, batch, true);
  EXPECT_EQ(a.loss, b.loss);
  expect_same_bits(a.logits, b.logits, "logits");
  // No placement changes while a micro-batch is with the shards.
  EXPECT_THROW(backend.set_placement(placement), troupe::error);
  runner.backward(context_, 0, tensor(), 1.0f);
  EXPECT_NO_THROW(backend.set_placement(placement));
}

TEST_F(ExpertParallel, ASuccessorTakesItsExpertsWeightsAndMomentsOrNothing) {
  const auto checkpoint = hf_checkpoint::open(troupe::testing::fixture_model("groups"));
  const model_config& config = checkpoint.config();
  sharded_model sharded(checkpoint, registry_,
                        {{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}}, context_, {});
  std::vector<std::unique_ptr<adamw>> optimizers;
  const adamw_settings settings{0.9, 0.95, 1e-8, 0.1};
  for (auto& shard : sharded.shards) {
    optimizers.push_back(std::make_unique<adamw>(settings));
    optimizers.back()->attach(shard->parameters());
  }
  sharded.runners[0]->forward(context_, 0, batch_of(fixture_tokens("groups")), true);
  sharded.runners[0]->backward(context_, 0, tensor(), 1.0f);
  for (auto& o : optimizers) o->step(1e-3, 1.0, 1, pool_);  // moments that are not zero

  const std::int64_t layer = config.first_k_dense_replace;
  const expert_handover handover = hand_over(*sharded.shards[0], optimizers[0].get(), {{layer, 3}});
  EXPECT_FALSE(handover.values.empty());
  EXPECT_EQ(handover.moments.size(), 2 * handover.values.size());
  EXPECT_THROW(hand_over(*sharded.shards[0], optimizers[0].get(), {{layer, 9}}), troupe::error);

  auto build = [&](std::shared_ptr<const plugin_library> moe,
                   const std::map<std::int64_t, std::vector<std::int64_t>>& experts) {
    return std::make_unique<expert_shard>(config, std::move(moe), experts);
  };
  expert_placement_order order;
  order.experts = sharded.shards[1]->layer_experts();
  order.experts[layer] = {3, 8, 9, 10, 11, 12, 13, 14, 15};
  order.values = handover.values;
  order.moments = handover.moments;
  const shard_successor next =
      prepare_successor(*sharded.shards[1], optimizers[1].get(), order, build, settings);
  std::map<std::string, tensor> old_moments, new_moments;
  for (const auto& o : {std::cref(*optimizers[0]), std::cref(*optimizers[1])})
    for (auto& [name, t] : o.get().state()) old_moments[name] = t;
  for (auto& [name, t] : next.optimizer->state()) new_moments[name] = t;
  for (parameter* p : next.shard->parameters().all()) {
    const parameter* before = sharded.shards[0]->parameters().find(p->name);
    if (before == nullptr) before = sharded.shards[1]->parameters().find(p->name);
    ASSERT_NE(before, nullptr) << p->name;
    expect_same_bits(p->value, before->value, p->name);
    for (const char* suffix : {".exp_avg", ".exp_avg_sq"})
      expect_same_bits(new_moments.at(p->name + suffix), old_moments.at(p->name + suffix),
                       p->name + suffix);
  }
  EXPECT_EQ(next.shard->parameters_of(layer, 3).size(), handover.values.size());

  // Expert 2 was never handed over; a tensor of the wrong shape is refused too.
  order.experts[layer] = {2, 3, 8, 9, 10, 11, 12, 13, 14, 15};
  try {
    prepare_successor(*sharded.shards[1], optimizers[1].get(), order, build, settings);
    FAIL() << "expert 2 never arrived";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format("model.layers.{}.mlp.experts.2.", layer)),
              std::string::npos)
        << e.what();
  }
  order.experts[layer] = {3, 8, 9, 10, 11, 12, 13, 14, 15};
  order.values[0].second = tensor::zeros(dtype::f32, {3});
  EXPECT_THROW(prepare_successor(*sharded.shards[1], optimizers[1].get(), order, build, settings),
               troupe::error);
}

}  // namespace
