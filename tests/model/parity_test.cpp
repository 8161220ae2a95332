// Parity with Hugging Face transformers: every committed fixture (tests/fixtures/models, made by
// tools/reference/make_fixtures.py with transformers 5.17 in float64) gives the same logits here
// to a relative error of at most 1e-4 in FP32 (max |a - b| / max |b|), the MTP module's logits
// too, and the same cross-entropy losses.
#include <gtest/gtest.h>

#include <thread>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/support/fixtures.hpp"

namespace {

using namespace troupe;

class Parity : public ::testing::TestWithParam<const char*> {};

TEST_P(Parity, LogitsMtpLogitsAndLossesMatchTransformers) {
  const auto directory = troupe::testing::fixture_model(GetParam());
  const auto reference = troupe::testing::read_json(directory / "reference.json");
  const auto checkpoint = hf_checkpoint::open(directory);
  const model_config& config = checkpoint.config();
  plugin_registry registry;
  model_runner runner(config, {}, load_model_plugins(registry, config));
  load_parameters(checkpoint, runner.parameters());

  const std::vector<std::int32_t> tokens = reference["tokens"].get<std::vector<std::int32_t>>();
  const auto length = static_cast<std::int64_t>(tokens.size());
  model_batch batch;
  batch.tokens = tensor::empty(dtype::i32, {1, length});
  batch.targets = tensor::empty(dtype::i32, {1, length});
  for (std::int64_t i = 0; i < length; ++i) {
    batch.tokens.data_as<std::int32_t>()[i] = tokens[static_cast<std::size_t>(i)];
    batch.targets.data_as<std::int32_t>()[i] =
        i + 1 < length ? tokens[static_cast<std::size_t>(i + 1)] : -1;
  }
  thread_pool pool(2);
  exec_context context(device::cpu(), pool);
  const model_output out = runner.forward(context, 0, batch, true);

  const auto expected = troupe::testing::read_floats(directory / "logits.bin");
  ASSERT_EQ(static_cast<std::int64_t>(expected.size()), out.logits.numel());
  const double error = troupe::testing::max_relative_error(out.logits.data_as<float>(),
                                                           expected.data(), expected.size());
  EXPECT_LE(error, 1e-4) << GetParam() << ": logits";
  std::printf("[ parity ] %-10s logits max relative error %.3g\n", GetParam(), error);

  ASSERT_EQ(out.mtp_logits.size(), 1u);
  const auto expected_mtp = troupe::testing::read_floats(directory / "mtp_logits.bin");
  ASSERT_EQ(static_cast<std::int64_t>(expected_mtp.size()), out.mtp_logits[0].numel());
  const double mtp_error = troupe::testing::max_relative_error(
      out.mtp_logits[0].data_as<float>(), expected_mtp.data(), expected_mtp.size());
  EXPECT_LE(mtp_error, 1e-4) << GetParam() << ": MTP logits";
  std::printf("[ parity ] %-10s MTP logits max relative error %.3g\n", GetParam(), mtp_error);

  EXPECT_NEAR(out.loss, reference["loss"].get<double>(), 1e-5 * reference["loss"].get<double>());
  // troupe reports lambda/D * sum_k CE_k; the fixture holds CE_1.
  EXPECT_NEAR(out.mtp_loss / 0.3, reference["mtp_loss"].get<double>(),
              1e-5 * reference["mtp_loss"].get<double>());
  runner.forget(0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity,
                         ::testing::Values("q-lora", "no-q-lora", "yarn", "groups", "fp8"),
                         [](const auto& test_info) {
                           std::string name = test_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
