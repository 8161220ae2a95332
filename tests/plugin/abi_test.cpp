// The plugin ABI end to end through the test-only attention plugin: parameters declared by the
// plugin and owned by the runtime, forward and backward of several micro-batches in flight, the
// split backward, state export/import into a fresh copy of the library, and a GEMM plugin taking
// over from the runtime's provider. Gradients are checked against central finite differences of
// an independent float64 implementation of the same attention.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "runtime/exec/exec_context.hpp"
#include "runtime/plugin/instance.hpp"

namespace {

namespace fs = std::filesystem;
using troupe::dtype;
using troupe::tensor;

constexpr std::int64_t hidden = 8;
constexpr std::int64_t tokens = 5;

fs::path test_plugin_dir() {
  const char* dir = std::getenv("TROUPE_TEST_PLUGIN_DIR");
  return dir != nullptr ? fs::path(dir) : fs::path("tests/plugins");
}

tensor random_tensor(std::vector<std::int64_t> shape, std::mt19937& rng, float scale) {
  tensor t = tensor::empty(dtype::f32, std::move(shape));
  std::normal_distribution<float> normal(0.0f, scale);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = normal(rng);
  return t;
}

/// float64 reference: y = softmax(mask(q k^T / sqrt(d))) v Wo^T with q, k, v = x W^T.
std::vector<double> reference_forward(const std::vector<std::vector<double>>& w,
                                      const std::vector<double>& x) {
  const auto d = static_cast<std::size_t>(hidden), t = static_cast<std::size_t>(tokens);
  auto project = [&](const std::vector<double>& in, const std::vector<double>& weight) {
    std::vector<double> out(t * d, 0.0);
    for (std::size_t i = 0; i < t; ++i)
      for (std::size_t o = 0; o < d; ++o)
        for (std::size_t c = 0; c < d; ++c) out[i * d + o] += in[i * d + c] * weight[o * d + c];
    return out;
  };
  auto q = project(x, w[0]), k = project(x, w[1]), v = project(x, w[2]);
  std::vector<double> context(t * d, 0.0);
  for (std::size_t i = 0; i < t; ++i) {
    std::vector<double> p(i + 1);
    double max_logit = -1e300, sum = 0.0;
    for (std::size_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (std::size_t c = 0; c < d; ++c) dot += q[i * d + c] * k[j * d + c];
      p[j] = dot / std::sqrt(static_cast<double>(d));
      max_logit = std::max(max_logit, p[j]);
    }
    for (auto& value : p) sum += (value = std::exp(value - max_logit));
    for (std::size_t j = 0; j <= i; ++j)
      for (std::size_t c = 0; c < d; ++c) context[i * d + c] += p[j] / sum * v[j * d + c];
  }
  return project(context, w[3]);
}

double reference_loss(const std::vector<std::vector<double>>& w, const std::vector<double>& x,
                      const std::vector<double>& probe) {
  auto y = reference_forward(w, x);
  double loss = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) loss += y[i] * probe[i];
  return loss;
}

std::vector<double> to_double(const tensor& t) {
  return {t.data_as<const float>(), t.data_as<const float>() + t.numel()};
}

class AttentionPlugin : public ::testing::Test {
 protected:
  AttentionPlugin()
      : registry_(troupe::plugin_search_path({{test_plugin_dir(), "test"}})),
        pool_(2),
        context_(troupe::device::cpu(), pool_) {
    library_ = registry_.load("test-attention", {troupe::plugin_kind::attention});
    layer_ = make_layer(library_);
    std::mt19937 rng(7);
    for (const auto& spec : layer_->parameters()) {
      params_.push_back(random_tensor(spec.shape, rng, spec.init_scale));
      grads_.push_back(tensor::zeros(spec.type, spec.shape));
    }
    layer_->bind(params_, grads_);
  }

  std::unique_ptr<troupe::layer_instance> make_layer(
      std::shared_ptr<const troupe::plugin_library> library) {
    troupe::instance_options options;
    options.model_config_json = R"({"hidden_size": 8})";
    options.layer_index = 0;
    return std::make_unique<troupe::layer_instance>(std::move(library), options);
  }

  std::vector<std::vector<double>> weights() const {
    std::vector<std::vector<double>> w;
    for (const auto& p : params_) w.push_back(to_double(p));
    return w;
  }

  void zero_grads() {
    for (auto& g : grads_) std::fill_n(g.data_as<float>(), g.numel(), 0.0f);
  }

  troupe::plugin_registry registry_;
  troupe::thread_pool pool_;
  troupe::exec_context context_;
  std::shared_ptr<const troupe::plugin_library> library_;
  std::unique_ptr<troupe::layer_instance> layer_;
  std::vector<tensor> params_, grads_;
};

TEST_F(AttentionPlugin, DeclaresItsParametersForTheRuntimeToOwn) {
  auto specs = layer_->parameters();
  ASSERT_EQ(specs.size(), 4u);
  EXPECT_EQ(specs[0].name, "self_attn.q_proj.weight");
  EXPECT_EQ(specs[3].name, "self_attn.o_proj.weight");
  EXPECT_EQ(specs[0].shape, (std::vector<std::int64_t>{hidden, hidden}));
  EXPECT_TRUE(specs[0].trainable());
  EXPECT_EQ(specs[0].init, TROUPE_INIT_NORMAL);
  auto outputs =
      layer_->infer_outputs(std::vector<tensor>{tensor::zeros(dtype::f32, {tokens, hidden})});
  ASSERT_EQ(outputs.size(), 1u);
  EXPECT_EQ(outputs[0].shape, (std::vector<std::int64_t>{tokens, hidden}));
}

TEST_F(AttentionPlugin, ForwardMatchesFloat64AndBackwardMatchesFiniteDifferences) {
  std::mt19937 rng(11);
  // Two micro-batches in flight at once; backward in reverse order, as 1F1B does.
  tensor x0 = random_tensor({tokens, hidden}, rng, 1.0f),
         x1 = random_tensor({tokens, hidden}, rng, 1.0f);
  tensor probe0 = random_tensor({tokens, hidden}, rng, 1.0f),
         probe1 = random_tensor({tokens, hidden}, rng, 1.0f);
  auto y0 = layer_->forward(context_, 0, std::vector<tensor>{x0});
  auto y1 = layer_->forward(context_, 1, std::vector<tensor>{x1});
  auto w = weights();
  for (const auto& [x, y] : {std::pair{x0, y0[0]}, std::pair{x1, y1[0]}}) {
    auto expected = reference_forward(w, to_double(x));
    for (std::size_t i = 0; i < expected.size(); ++i)
      EXPECT_NEAR(y.data_as<float>()[i], expected[i], 1e-5 * (1.0 + std::fabs(expected[i])));
  }
  tensor dx1 = tensor::zeros(dtype::f32, {tokens, hidden});
  layer_->backward(context_, 1, TROUPE_BACKWARD_BOTH, std::vector<tensor>{probe1},
                   std::vector<tensor>{dx1});
  zero_grads();  // keep only micro-batch 0's weight gradients for the check below
  tensor dx0 = tensor::zeros(dtype::f32, {tokens, hidden});
  layer_->backward(context_, 0, TROUPE_BACKWARD_BOTH, std::vector<tensor>{probe0},
                   std::vector<tensor>{dx0});

  // Central differences of the float64 reference; tolerance 1e-4 relative (float32 compute).
  const double h = 1e-5;
  auto x = to_double(x0), probe = to_double(probe0);
  for (std::size_t p = 0; p < 4; ++p) {
    for (std::size_t i = 0; i < w[p].size(); ++i) {
      auto plus = w, minus = w;
      plus[p][i] += h;
      minus[p][i] -= h;
      double numeric = (reference_loss(plus, x, probe) - reference_loss(minus, x, probe)) / (2 * h);
      EXPECT_NEAR(grads_[p].data_as<float>()[i], numeric, 1e-4 * (1.0 + std::fabs(numeric)))
          << "parameter " << p << " element " << i;
    }
  }
  for (std::size_t i = 0; i < x.size(); ++i) {
    auto plus = x, minus = x;
    plus[i] += h;
    minus[i] -= h;
    double numeric = (reference_loss(w, plus, probe) - reference_loss(w, minus, probe)) / (2 * h);
    EXPECT_NEAR(dx0.data_as<float>()[i], numeric, 1e-4 * (1.0 + std::fabs(numeric))) << "x " << i;
  }
}

TEST_F(AttentionPlugin, SplitBackwardEqualsTheWholeAndGradientsAccumulate) {
  std::mt19937 rng(3);
  tensor x = random_tensor({tokens, hidden}, rng, 1.0f),
         dy = random_tensor({tokens, hidden}, rng, 1.0f);
  layer_->forward(context_, 5, std::vector<tensor>{x});
  tensor dx_whole = tensor::zeros(dtype::f32, {tokens, hidden});
  layer_->backward(context_, 5, TROUPE_BACKWARD_BOTH, std::vector<tensor>{dy},
                   std::vector<tensor>{dx_whole});
  std::vector<tensor> whole;
  for (auto& g : grads_) whole.push_back(g.clone());

  zero_grads();
  layer_->forward(context_, 6, std::vector<tensor>{x});
  tensor dx_split = tensor::zeros(dtype::f32, {tokens, hidden});
  layer_->backward(context_, 6, TROUPE_BACKWARD_INPUT, std::vector<tensor>{dy},
                   std::vector<tensor>{dx_split});
  for (auto& g : grads_)  // the input part leaves weight gradients alone
    for (std::int64_t i = 0; i < g.numel(); ++i) EXPECT_EQ(g.data_as<float>()[i], 0.0f);
  layer_->backward(context_, 6, TROUPE_BACKWARD_WEIGHT, {}, {});
  for (std::size_t p = 0; p < grads_.size(); ++p)
    for (std::int64_t i = 0; i < grads_[p].numel(); ++i)
      EXPECT_FLOAT_EQ(grads_[p].data_as<float>()[i], whole[p].data_as<float>()[i]);
  for (std::int64_t i = 0; i < dx_split.numel(); ++i)
    EXPECT_FLOAT_EQ(dx_split.data_as<float>()[i], dx_whole.data_as<float>()[i]);

  // A second micro-batch accumulates with += into the same gradients.
  layer_->forward(context_, 7, std::vector<tensor>{x});
  layer_->backward(context_, 7, TROUPE_BACKWARD_BOTH, std::vector<tensor>{dy},
                   std::vector<tensor>{dx_split});
  for (std::size_t p = 0; p < grads_.size(); ++p)
    for (std::int64_t i = 0; i < grads_[p].numel(); ++i)
      EXPECT_NEAR(grads_[p].data_as<float>()[i], 2.0f * whole[p].data_as<float>()[i], 1e-5f);
}

TEST_F(AttentionPlugin, MisuseIsReportedWithThePluginAndTheCall) {
  tensor dy = tensor::zeros(dtype::f32, {tokens, hidden}),
         dx = tensor::zeros(dtype::f32, {tokens, hidden});
  try {
    layer_->backward(context_, 42, TROUPE_BACKWARD_BOTH, std::vector<tensor>{dy},
                     std::vector<tensor>{dx});
    FAIL() << "backward without forward must fail";
  } catch (const troupe::plugin_call_error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("test-attention"), std::string::npos) << message;
    EXPECT_NE(message.find("backward()"), std::string::npos) << message;
    EXPECT_NE(message.find("micro-batch 42"), std::string::npos) << message;
  }
  EXPECT_THROW(
      layer_->forward(context_, 0, std::vector<tensor>{tensor::zeros(dtype::f32, {tokens, 3})}),
      troupe::plugin_call_error);
  troupe::instance_options bad;
  bad.model_config_json = "{not json";
  EXPECT_THROW(troupe::layer_instance(library_, bad), troupe::plugin_call_error);
  // A forgotten micro-batch cannot be backpropagated.
  layer_->forward(context_, 9, std::vector<tensor>{dy});
  layer_->forget(9);
  EXPECT_THROW(layer_->backward(context_, 9, TROUPE_BACKWARD_BOTH, std::vector<tensor>{dy},
                                std::vector<tensor>{dx}),
               troupe::plugin_call_error);
}

TEST_F(AttentionPlugin, StateMovesIntoAFreshCopyOfTheLibrary) {
  tensor x = tensor::zeros(dtype::f32, {tokens, hidden});
  for (int mb = 0; mb < 3; ++mb) {
    layer_->forward(context_, mb, std::vector<tensor>{x});
    layer_->forget(mb);
  }
  auto state = layer_->export_state();
  ASSERT_EQ(state.size(), 8u);
  auto fresh_library = registry_.load("test-attention", {troupe::plugin_kind::attention, true});
  auto fresh = make_layer(fresh_library);
  fresh->bind(params_, grads_);  // parameters stay with the runtime
  fresh->import_state(state);
  EXPECT_EQ(fresh->export_state(), state);
  // The new code computes the same output from the same parameters.
  std::mt19937 rng(5);
  tensor input = random_tensor({tokens, hidden}, rng, 1.0f);
  auto old_y = layer_->forward(context_, 10, std::vector<tensor>{input});
  auto new_y = fresh->forward(context_, 10, std::vector<tensor>{input});
  for (std::int64_t i = 0; i < old_y[0].numel(); ++i)
    EXPECT_EQ(old_y[0].data_as<float>()[i], new_y[0].data_as<float>()[i]);
  EXPECT_THROW(fresh->import_state(std::vector<std::uint8_t>{1, 2, 3}), troupe::plugin_call_error);
}

TEST_F(AttentionPlugin, ASuccessorTakesOverTheParametersAndTheState) {
  tensor x = tensor::zeros(dtype::f32, {tokens, hidden});
  for (int mb = 0; mb < 2; ++mb) {
    layer_->forward(context_, mb, std::vector<tensor>{x});
    layer_->forget(mb);
  }
  auto fresh_library = registry_.load("test-attention", {troupe::plugin_kind::attention, true});
  auto successor = layer_->successor(fresh_library);
  EXPECT_EQ(&successor->library(), fresh_library.get());
  EXPECT_EQ(successor->export_state(), layer_->export_state());
  std::mt19937 rng(6);
  tensor input = random_tensor({tokens, hidden}, rng, 1.0f);
  auto old_y = layer_->forward(context_, 10, std::vector<tensor>{input});
  auto new_y = successor->forward(context_, 10, std::vector<tensor>{input});
  for (std::int64_t i = 0; i < old_y[0].numel(); ++i)
    EXPECT_EQ(old_y[0].data_as<float>()[i], new_y[0].data_as<float>()[i]);
}

TEST_F(AttentionPlugin, AGemmPluginCanReplaceTheRuntimeProvider) {
  std::mt19937 rng(9);
  tensor x = random_tensor({tokens, hidden}, rng, 1.0f);
  auto blas_y = layer_->forward(context_, 0, std::vector<tensor>{x});
  auto gemm_library = registry_.load("test-naive-gemm", {troupe::plugin_kind::gemm});
  troupe::gemm_instance naive(gemm_library, {});
  EXPECT_STREQ(naive.provider()->name, "test-naive-gemm");
  troupe::exec_context naive_context(troupe::device::cpu(), pool_, naive.provider());
  auto naive_y = layer_->forward(naive_context, 1, std::vector<tensor>{x});
  for (std::int64_t i = 0; i < blas_y[0].numel(); ++i)
    EXPECT_NEAR(naive_y[0].data_as<float>()[i], blas_y[0].data_as<float>()[i], 1e-5f);
}

}  // namespace
