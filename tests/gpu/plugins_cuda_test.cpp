// The layer plugins (MLA, MoE) on cuda:0 against the same plugins on the CPU (FP32 both, the
// same parameters and inputs): outputs, input gradients and every parameter's gradient agree
// within 1e-5 of the largest value (max |gpu - cpu| / max |cpu|); expert selections and counts
// are identical. The CPU path is itself held to
// transformers (tests/model/parity_test.cpp) and to finite differences (plugin_gradient_test).
#include <gtest/gtest.h>

#include <cstdio>
#include <random>

#include "runtime/device/cuda.hpp"
#include "runtime/model/decoder_layer.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/gpu/gpu_skip.hpp"
#include "tests/support/fixtures.hpp"
#include "tests/support/random_parameters.hpp"

namespace {

using namespace troupe;

constexpr double bound = 1e-5;

tensor random_tensor(std::vector<std::int64_t> shape, std::uint32_t seed) {
  tensor t = tensor::empty(dtype::f32, std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = normal(rng);
  return t;
}

double relative_error(const tensor& gpu, const tensor& cpu) {
  const tensor g = gpu.to(device::cpu());
  double worst = 0.0, scale = 1e-30;
  for (std::int64_t i = 0; i < cpu.numel(); ++i) {
    const double c = cpu.data_as<float>()[i], d = g.data_as<float>()[i];
    worst = std::max(worst, std::fabs(d - c));
    scale = std::max(scale, std::fabs(c));
  }
  return worst / scale;
}

/// One plugin instance on the CPU and a twin on cuda:0 bound to copies of the same parameters.
struct twin_layers {
  parameter_store store;
  std::vector<std::string> names;
  std::unique_ptr<layer_instance> cpu, gpu;
  std::vector<tensor> gpu_values, gpu_grads;

  twin_layers(plugin_registry& registry, const char* plugin, plugin_kind kind,
              const model_config& config, int layer) {
    instance_options o;
    o.model_config_json = complete_json(config);
    o.layer_index = layer;
    cpu = std::make_unique<layer_instance>(registry.load(plugin, {kind}), o);
    gpu = std::make_unique<layer_instance>(registry.load(plugin, {kind}), o);
    names = declare_parameters(*cpu, layer, store);
    troupe::testing::randomize(store, 7);
    auto [values, grads] = bound_tensors(store, names);
    cpu->bind(values, grads);
    for (std::size_t i = 0; i < values.size(); ++i) {
      gpu_values.push_back(values[i].to(device::cuda(0)));
      gpu_grads.push_back(grads[i].defined()
                              ? tensor::zeros(dtype::f32, grads[i].shape(), device::cuda(0))
                              : tensor());
    }
    gpu->bind(gpu_values, gpu_grads);
  }
};

class PluginsOnCuda : public ::testing::Test {
 protected:
  plugin_registry registry_;
  thread_pool pool_{2};
};

TEST_F(PluginsOnCuda, MlaForwardAndBackwardMatchTheCpu) {
  TROUPE_SKIP_WITHOUT_GPU();
  exec_context cpu_context(device::cpu(), pool_);
  exec_context gpu_context(device::cuda(0), pool_);
  for (const char* fixture : {"q-lora", "no-q-lora", "yarn"}) {
    const model_config c =
        load_model_config(troupe::testing::fixture_model(fixture) / "config.json");
    twin_layers layer(registry_, "mla", plugin_kind::attention, c, 0);
    for (std::int64_t length : {9, 70}) {
      const std::int64_t micro_batch = length;
      const tensor x = random_tensor({2, length, c.hidden_size}, 1);
      const tensor r = random_tensor({2, length, c.hidden_size}, 2);
      const tensor y = layer.cpu->forward(cpu_context, micro_batch, std::vector<tensor>{x})[0];
      const tensor xg = x.to(device::cuda(0)), rg = r.to(device::cuda(0));
      const tensor yg = layer.gpu->forward(gpu_context, micro_batch, std::vector<tensor>{xg})[0];
      tensor dx = tensor::zeros(dtype::f32, x.shape());
      tensor dxg = tensor::zeros(dtype::f32, x.shape(), device::cuda(0));
      layer.cpu->backward(cpu_context, micro_batch, TROUPE_BACKWARD_BOTH, std::vector<tensor>{r},
                          std::vector<tensor>{dx});
      layer.gpu->backward(gpu_context, micro_batch, TROUPE_BACKWARD_BOTH, std::vector<tensor>{rg},
                          std::vector<tensor>{dxg});
      cuda::synchronize_stream(gpu_context.stream(), 0);
      const double ey = relative_error(yg, y), edx = relative_error(dxg, dx);
      std::printf("[ mla %s, length %lld ] y %.3g, dx %.3g\n", fixture,
                  static_cast<long long>(length), ey, edx);
      EXPECT_LT(ey, bound) << fixture;
      EXPECT_LT(edx, bound) << fixture;
    }
    // Gradients accumulated over both lengths, parameter by parameter.
    auto [values, grads] = bound_tensors(layer.store, layer.names);
    double worst = 0.0;
    for (std::size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) continue;
      const double e = relative_error(layer.gpu_grads[i], grads[i]);
      EXPECT_LT(e, bound) << layer.names[i];
      worst = std::max(worst, e);
    }
    std::printf("[ mla %s ] worst parameter gradient %.3g over %zu parameters\n", fixture, worst,
                grads.size());
  }
}

TEST_F(PluginsOnCuda, MoeForwardAndBackwardMatchTheCpu) {
  TROUPE_SKIP_WITHOUT_GPU();
  exec_context cpu_context(device::cpu(), pool_);
  exec_context gpu_context(device::cuda(0), pool_);
  for (const char* fixture : {"q-lora", "groups"}) {
    const model_config c =
        load_model_config(troupe::testing::fixture_model(fixture) / "config.json");
    twin_layers layer(registry_, "moe", plugin_kind::moe, c, 1);
    for (std::int64_t length : {9, 70}) {
      const std::int64_t micro_batch = length;
      const tensor x = random_tensor({2, length, c.hidden_size}, 3);
      const tensor r = random_tensor({2, length, c.hidden_size}, 4);
      const auto out = layer.cpu->forward(cpu_context, micro_batch, std::vector<tensor>{x});
      const tensor xg = x.to(device::cuda(0));  // kept alive until backward (the ABI's rule)
      const auto out_g = layer.gpu->forward(gpu_context, micro_batch, std::vector<tensor>{xg});
      // Expert counts are integers: identical. The balance loss: a float of a float64 sum.
      const tensor counts_g = out_g[1].to(device::cpu());
      for (std::int64_t e = 0; e < out[1].numel(); ++e)
        ASSERT_EQ(counts_g.data_as<std::int64_t>()[e], out[1].data_as<std::int64_t>()[e]) << e;
      const double eb = relative_error(out_g[2], out[2]);
      EXPECT_LT(eb, bound) << fixture;
      // Backward with the balance loss's gradient as the runtime passes it (a scale of 0.5).
      tensor d_balance = tensor::empty(dtype::f32, {1});
      *d_balance.data_as<float>() = 0.5f;
      tensor dx = tensor::zeros(dtype::f32, x.shape());
      tensor dxg = tensor::zeros(dtype::f32, x.shape(), device::cuda(0));
      layer.cpu->backward(cpu_context, micro_batch, TROUPE_BACKWARD_BOTH,
                          std::vector<tensor>{r, tensor(), d_balance}, std::vector<tensor>{dx});
      layer.gpu->backward(
          gpu_context, micro_batch, TROUPE_BACKWARD_BOTH,
          std::vector<tensor>{r.to(device::cuda(0)), tensor(), d_balance.to(device::cuda(0))},
          std::vector<tensor>{dxg});
      cuda::synchronize_stream(gpu_context.stream(), 0);
      const double ey = relative_error(out_g[0], out[0]), edx = relative_error(dxg, dx);
      std::printf("[ moe %s, length %lld ] y %.3g, balance loss %.3g, dx %.3g\n", fixture,
                  static_cast<long long>(length), ey, eb, edx);
      EXPECT_LT(ey, bound) << fixture;
      EXPECT_LT(edx, bound) << fixture;
    }
    auto [values, grads] = bound_tensors(layer.store, layer.names);
    double worst = 0.0;
    std::size_t trainable = 0;
    for (std::size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined()) continue;
      ++trainable;
      const double e = relative_error(layer.gpu_grads[i], grads[i]);
      EXPECT_LT(e, bound) << layer.names[i];
      worst = std::max(worst, e);
    }
    std::printf("[ moe %s ] worst parameter gradient %.3g over %zu parameters\n", fixture, worst,
                trainable);
  }
}

TEST_F(PluginsOnCuda, ParametersOnAnotherDeviceAreRefusedByName) {
  TROUPE_SKIP_WITHOUT_GPU();
  exec_context gpu_context(device::cuda(0), pool_);
  const model_config c =
      load_model_config(troupe::testing::fixture_model("q-lora") / "config.json");
  plugin_registry registry;
  instance_options o;
  o.model_config_json = complete_json(c);
  layer_instance cpu_bound(registry.load("mla", {plugin_kind::attention}), o);
  parameter_store store;
  const auto names = declare_parameters(cpu_bound, 0, store);
  auto [values, grads] = bound_tensors(store, names);
  cpu_bound.bind(values, grads);
  const tensor xg = tensor::zeros(dtype::f32, {1, 4, c.hidden_size}, device::cuda(0));
  try {
    cpu_bound.forward(gpu_context, 0, std::vector<tensor>{xg});
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("parameters are on cpu, but the call computes on cuda:0"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
