// Finite-difference checks of the MLA, MoE and MTP plugins (inputs and every parameter, the
// router's differentiable path and the balance loss included) and of the whole model (every
// parameter, through all losses), plus the MLA plugin's two forward paths agreeing and the
// activation memory its recomputing backward saves. Tolerances: support/gradient_check.hpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/support/fixtures.hpp"
#include "tests/support/gradient_check.hpp"
#include "tests/support/random_parameters.hpp"

namespace {

using namespace troupe;
using troupe::testing::expect_gradients_match;

tensor random_tensor(std::vector<std::int64_t> shape, std::uint32_t seed, float scale = 1.0f) {
  tensor t = tensor::empty(dtype::f32, std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = normal(rng);
  return t;
}

double dot(const tensor& a, const tensor& b) {
  double s = 0.0;
  for (std::int64_t i = 0; i < a.numel(); ++i)
    s += static_cast<double>(a.data_as<float>()[i]) * static_cast<double>(b.data_as<float>()[i]);
  return s;
}

std::vector<float> values_of(const tensor& t) {
  return {t.data_as<float>(), t.data_as<float>() + t.numel()};
}

/// One plugin instance with its parameters in a store, randomised and bound.
struct plugin_layer {
  parameter_store store;
  std::unique_ptr<layer_instance> instance;
  std::vector<std::string> names;

  plugin_layer(std::shared_ptr<const plugin_library> library, const model_config& config, int layer,
               const std::string& options = "{}") {
    instance_options o;
    o.model_config_json = complete_json(config);
    o.options_json = options;
    o.layer_index = layer;
    instance = std::make_unique<layer_instance>(std::move(library), o);
    names = declare_parameters(*instance, layer, store);
    troupe::testing::randomize(store, 100 + static_cast<std::uint32_t>(layer));
    auto [values, grads] = bound_tensors(store, names);
    instance->bind(values, grads);
  }

  /// Gradient variables for every trainable parameter.
  std::vector<troupe::testing::gradient_variable> parameter_variables() {
    std::vector<troupe::testing::gradient_variable> out;
    for (parameter* p : store.all())
      if (p->grad.defined())
        out.push_back({p->name, p->value.data_as<float>(), values_of(p->grad)});
    return out;
  }
};

class PluginGradients : public ::testing::Test {
 protected:
  model_config config(const char* fixture) {
    return load_model_config(troupe::testing::fixture_model(fixture) / "config.json");
  }
  plugin_registry registry_;
  thread_pool pool_{2};
  exec_context context_{device::cpu(), pool_};
};

class MlaGradients : public PluginGradients, public ::testing::WithParamInterface<const char*> {};

TEST_P(MlaGradients, InputAndEveryParameter) {
  const model_config c = config(GetParam());
  plugin_layer layer(registry_.load("mla", {plugin_kind::attention}), c, 0);
  tensor x = random_tensor({2, 6, c.hidden_size}, 1), r = random_tensor({2, 6, c.hidden_size}, 2);
  std::int64_t micro_batch = 0;
  auto loss = [&] {
    const tensor y = layer.instance->forward(context_, ++micro_batch, std::vector<tensor>{x})[0];
    layer.instance->forget(micro_batch);
    return dot(y, r);
  };
  layer.instance->forward(context_, 0, std::vector<tensor>{x});
  tensor dx = tensor::zeros(dtype::f32, x.shape());
  layer.instance->backward(context_, 0, TROUPE_BACKWARD_BOTH, std::vector<tensor>{r},
                           std::vector<tensor>{dx});
  auto variables = layer.parameter_variables();
  variables.push_back({"x", x.data_as<float>(), values_of(dx)});
  expect_gradients_match(loss, variables);
}

INSTANTIATE_TEST_SUITE_P(Configs, MlaGradients, ::testing::Values("q-lora", "no-q-lora", "yarn"),
                         [](const auto& test_info) {
                           std::string name = test_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST_F(PluginGradients, MlaNaiveAndAbsorbedPathsAgreeAndRecomputationSavesMemory) {
  const model_config c = config("q-lora");
  plugin_layer naive(registry_.load("mla", {plugin_kind::attention}), c, 0);
  plugin_layer absorbed(registry_.load("mla", {plugin_kind::attention}), c, 0,
                        R"({"path": "absorbed"})");
  for (parameter* p : absorbed.store.all()) p->value.copy_from(naive.store.at(p->name).value);
  tensor x = random_tensor({2, 9, c.hidden_size}, 3);
  const tensor a = naive.instance->forward(context_, 0, std::vector<tensor>{x})[0];
  const tensor b = absorbed.instance->forward(context_, 0, std::vector<tensor>{x})[0];
  const double error = troupe::testing::max_relative_error(b.data_as<float>(), a.data_as<float>(),
                                                           static_cast<std::size_t>(a.numel()));
  EXPECT_LE(error, 1e-5);
  std::printf("[ mla ] absorbed vs naive: max relative difference %.3g\n", error);
  // The absorbed path is the inference layout: it refuses to train.
  tensor dx = tensor::zeros(dtype::f32, x.shape());
  EXPECT_THROW(absorbed.instance->backward(context_, 0, TROUPE_BACKWARD_BOTH,
                                           std::vector<tensor>{x}, std::vector<tensor>{dx}),
               plugin_call_error);
  const auto stats = nlohmann::json::parse(naive.instance->statistics());
  const auto saved = stats["saved_activation_bytes"].get<std::int64_t>();
  const auto recomputed = stats["recomputed_activation_bytes"].get<std::int64_t>();
  EXPECT_GT(recomputed, 0);
  std::printf(
      "[ mla ] activations kept %lld bytes; storing the up-projections would add %lld bytes "
      "(%.2fx)\n",
      static_cast<long long>(saved), static_cast<long long>(recomputed),
      static_cast<double>(saved + recomputed) / static_cast<double>(saved));
  naive.instance->forget(0);
}

class MoeGradients : public PluginGradients, public ::testing::WithParamInterface<const char*> {};

TEST_P(MoeGradients, InputEveryParameterAndTheBalanceLoss) {
  const model_config c = config(GetParam());
  plugin_layer layer(registry_.load("moe", {plugin_kind::moe}), c, c.first_k_dense_replace,
                     R"({"balance_loss_alpha": 0.5})");
  tensor x = random_tensor({2, 6, c.hidden_size}, 4), r = random_tensor({2, 6, c.hidden_size}, 5);
  const float balance_weight = 3.0f;
  std::int64_t micro_batch = 0;
  tensor counts;
  auto loss = [&] {
    const auto out = layer.instance->forward(context_, ++micro_batch, std::vector<tensor>{x});
    layer.instance->forget(micro_batch);
    for (std::int64_t e = 0; e < counts.numel(); ++e)
      EXPECT_EQ(out[1].data_as<std::int64_t>()[e], counts.data_as<std::int64_t>()[e])
          << "the perturbation changed routing";
    return dot(out[0], r) +
           static_cast<double>(balance_weight) * static_cast<double>(*out[2].data_as<float>());
  };
  const auto out = layer.instance->forward(context_, 0, std::vector<tensor>{x});
  counts = out[1].clone();
  std::int64_t total = 0;
  for (std::int64_t e = 0; e < counts.numel(); ++e) total += counts.data_as<std::int64_t>()[e];
  EXPECT_EQ(total, 2 * 6 * c.num_experts_per_tok)
      << "every token reaches top-k experts: none is dropped";
  EXPECT_GT(*out[2].data_as<float>(), 0.0f);
  tensor d_balance = tensor::empty(dtype::f32, {1});
  *d_balance.data_as<float>() = balance_weight;
  tensor dx = tensor::zeros(dtype::f32, x.shape());
  layer.instance->backward(context_, 0, TROUPE_BACKWARD_INPUT,
                           std::vector<tensor>{r, tensor(), d_balance}, std::vector<tensor>{dx});
  layer.instance->backward(context_, 0, TROUPE_BACKWARD_WEIGHT, {}, {});
  auto variables = layer.parameter_variables();
  variables.push_back({"x", x.data_as<float>(), values_of(dx)});
  expect_gradients_match(loss, variables, 1e-3, 5e-3);

  // The balance loss alone, so its gradient is not lost under the output's.
  auto balance_only = [&] {
    const auto again = layer.instance->forward(context_, ++micro_batch, std::vector<tensor>{x});
    layer.instance->forget(micro_batch);
    return static_cast<double>(*again[2].data_as<float>());
  };
  layer.store.zero_grads();
  layer.instance->forward(context_, -1, std::vector<tensor>{x});
  *d_balance.data_as<float>() = 1.0f;
  tensor dx_balance = tensor::zeros(dtype::f32, x.shape());
  layer.instance->backward(
      context_, -1, TROUPE_BACKWARD_BOTH,
      std::vector<tensor>{tensor::zeros(dtype::f32, x.shape()), tensor(), d_balance},
      std::vector<tensor>{dx_balance});
  parameter& router =
      layer.store.at(fmt::format("model.layers.{}.mlp.gate.weight", c.first_k_dense_replace));
  expect_gradients_match(
      balance_only,
      {{"router weight (balance loss)", router.value.data_as<float>(), values_of(router.grad)},
       {"x (balance loss)", x.data_as<float>(), values_of(dx_balance)}},
      1e-3, 5e-3);
}

INSTANTIATE_TEST_SUITE_P(Configs, MoeGradients, ::testing::Values("q-lora", "groups"));

TEST_F(PluginGradients, MoeStateMovesToASuccessorAndAWrongStateIsRefused) {
  // The moe plugin's own state (lifetime counters) crosses a hot swap through export/import,
  // and the successor computes the same outputs from the same runtime-owned parameters.
  const model_config c = config("q-lora");
  plugin_layer layer(registry_.load("moe", {plugin_kind::moe}), c, c.first_k_dense_replace);
  tensor x = random_tensor({2, 6, c.hidden_size}, 4);
  std::vector<std::int64_t> routed(static_cast<std::size_t>(c.n_routed_experts), 0);
  for (int mb = 0; mb < 2; ++mb) {
    const auto out = layer.instance->forward(context_, mb, std::vector<tensor>{x});
    for (std::size_t e = 0; e < routed.size(); ++e) routed[e] += out[1].data_as<std::int64_t>()[e];
    layer.instance->forget(mb);
  }
  auto fresh = registry_.load("moe", {plugin_kind::moe, true});
  ASSERT_EQ(fresh->generation, 2);
  auto successor = layer.instance->successor(fresh);
  const auto stats = nlohmann::json::parse(successor->statistics());
  EXPECT_EQ(stats.at("forward_calls"), 2);
  EXPECT_EQ(stats.at("tokens_routed").get<std::vector<std::int64_t>>(), routed);
  const auto before = layer.instance->forward(context_, 7, std::vector<tensor>{x});
  const auto after = successor->forward(context_, 7, std::vector<tensor>{x});
  EXPECT_EQ(values_of(before[0]), values_of(after[0]));

  // A state counting another number of experts, or not the plugin's format, is refused.
  EXPECT_THROW(successor->import_state(std::vector<std::uint8_t>{'{', '}'}),
               troupe::plugin_call_error);
  const std::string other = R"({"format": "troupe-moe-state/1", "tokens_routed": [1, 2, 3]})";
  try {
    successor->import_state(std::vector<std::uint8_t>(other.begin(), other.end()));
    FAIL() << "expected the import to fail";
  } catch (const troupe::plugin_call_error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("counts 3 routed experts"));
  }
  // A successor of another kind is no successor.
  EXPECT_THROW(layer.instance->successor(registry_.load("mla", {plugin_kind::attention})),
               troupe::error);
}

TEST_F(PluginGradients, MtpInputsAndParameters) {
  const model_config c = config("q-lora");
  plugin_layer layer(registry_.load("mtp", {plugin_kind::mtp}), c,
                     static_cast<int>(c.num_hidden_layers));
  tensor h = random_tensor({2, 5, c.hidden_size}, 6), e = random_tensor({2, 5, c.hidden_size}, 7);
  tensor r = random_tensor({2, 5, c.hidden_size}, 8);
  std::int64_t micro_batch = 0;
  auto loss = [&] {
    const tensor y = layer.instance->forward(context_, ++micro_batch, std::vector<tensor>{h, e})[0];
    layer.instance->forget(micro_batch);
    return dot(y, r);
  };
  layer.instance->forward(context_, 0, std::vector<tensor>{h, e});
  tensor dh = tensor::zeros(dtype::f32, h.shape()), de = tensor::zeros(dtype::f32, e.shape());
  layer.instance->backward(context_, 0, TROUPE_BACKWARD_BOTH, std::vector<tensor>{r},
                           std::vector<tensor>{dh, de});
  auto variables = layer.parameter_variables();
  variables.push_back({"h_prev", h.data_as<float>(), values_of(dh)});
  variables.push_back({"embedded", e.data_as<float>(), values_of(de)});
  expect_gradients_match(loss, variables);
}

TEST_F(PluginGradients, WholeModelThroughEveryLoss) {
  const auto directory = troupe::testing::fixture_model("q-lora");
  const auto checkpoint = hf_checkpoint::open(directory);
  model_runner runner(checkpoint.config(), {}, load_model_plugins(registry_, checkpoint.config()),
                      {0.3, true});
  load_parameters(checkpoint, runner.parameters());
  const auto tokens = troupe::testing::read_json(directory / "reference.json")["tokens"]
                          .get<std::vector<std::int32_t>>();
  const auto length = static_cast<std::int64_t>(tokens.size());
  model_batch batch;
  batch.tokens = tensor::empty(dtype::i32, {1, length});
  batch.targets = tensor::empty(dtype::i32, {1, length});
  for (std::int64_t i = 0; i < length; ++i) {
    batch.tokens.data_as<std::int32_t>()[i] = tokens[static_cast<std::size_t>(i)];
    batch.targets.data_as<std::int32_t>()[i] =
        i + 1 < length ? tokens[static_cast<std::size_t>(i + 1)] : -1;
  }
  std::int64_t micro_batch = 0;
  auto loss = [&] {
    const double total = runner.forward(context_, ++micro_batch, batch).total();
    runner.forget(micro_batch);
    return total;
  };
  const model_output out = runner.forward(context_, 0, batch);
  EXPECT_GT(out.mtp_loss, 0.0);
  EXPECT_GT(out.balance_loss, 0.0);
  runner.parameters().zero_grads();
  runner.backward(context_, 0, tensor(), 1.0f);
  std::vector<troupe::testing::gradient_variable> variables;
  for (parameter* p : runner.parameters().all())
    if (p->grad.defined())
      variables.push_back({p->name, p->value.data_as<float>(), values_of(p->grad)});
  EXPECT_GT(variables.size(), 50u);
  expect_gradients_match(loss, variables, 1e-3, 5e-3);

  // A forward meant for evaluation keeps no head gradient; a backward after it still works,
  // recomputing the heads' logits: the same losses and every gradient to 1e-5 of its largest
  // (the scale applied to the softmax instead of by the GEMM: float rounding, carried through
  // every layer's backward).
  runner.parameters().zero_grads();
  const model_output evaluated = runner.forward(context_, 1, batch, false, false);
  EXPECT_EQ(evaluated.loss, out.loss);
  EXPECT_EQ(evaluated.mtp_loss, out.mtp_loss);
  runner.backward(context_, 1, tensor(), 1.0f);
  for (const auto& v : variables) {
    const parameter& p = runner.parameters().at(v.name);
    float largest = 0.0f;
    for (const float g : v.grad) largest = std::max(largest, std::abs(g));
    for (std::int64_t i = 0; i < p.grad.numel(); ++i)
      ASSERT_NEAR(p.grad.data_as<float>()[i], v.grad[static_cast<std::size_t>(i)],
                  1e-5 * static_cast<double>(largest) + 1e-12)
          << v.name << " " << i;
  }
}

}  // namespace
