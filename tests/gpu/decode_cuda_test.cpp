// Decoding over the paged latent cache on cuda:0 (kernels/cuda/latent_attention.cu through the
// mla plugin's forward_cached): every position's logits within 1e-4 relative (max |a - b| /
// max |b|) of the CPU's full recompute, the cache in device memory, a prefill and then one token
// per step across block boundaries, two sequences of different lengths in one step; a BF16
// cache picks the same tokens; greedy MTP speculative decoding gives the CPU's greedy text.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/inference/cached_model.hpp"
#include "runtime/inference/generation.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/gpu/gpu_skip.hpp"
#include "tests/support/fixture_model.hpp"
#include "tests/support/fixtures.hpp"

namespace {

using namespace troupe;

const device gpu = device::cuda(0);

using model_on = troupe::testing::fixture_runner;
using troupe::testing::random_tokens;

/// The CPU training forward's logits [length, vocab].
std::vector<float> cpu_logits(const char* fixture, const std::vector<std::int32_t>& tokens) {
  model_on m(fixture, device::cpu());
  const auto length = static_cast<std::int64_t>(tokens.size());
  model_batch batch;
  batch.tokens = tensor::empty(dtype::i32, {1, length});
  std::copy(tokens.begin(), tokens.end(), batch.tokens.data_as<std::int32_t>());
  const model_output out = m.runner.forward(m.context, 0, batch, true);
  return {out.logits.data_as<float>(), out.logits.data_as<float>() + out.logits.numel()};
}

std::vector<std::int64_t> rows_from(std::int64_t first, std::int64_t count) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) rows[static_cast<std::size_t>(i)] = first + i;
  return rows;
}

double error_at(const tensor& logits, const std::vector<float>& reference, std::int64_t first,
                std::int64_t vocab) {
  return troupe::testing::max_relative_error(logits.data_as<float>(),
                                             reference.data() + first * vocab,
                                             static_cast<std::size_t>(logits.numel()));
}

class DecodeOnCuda : public ::testing::TestWithParam<const char*> {};

TEST_P(DecodeOnCuda, EveryPositionMatchesTheCpuFullRecompute) {
  TROUPE_SKIP_WITHOUT_GPU();
  model_on m(GetParam(), gpu);
  cached_model model(m.runner);
  const std::int64_t vocab = model.config().vocab_size;
  const auto a = random_tokens(40, vocab, 21), b = random_tokens(30, vocab, 22);
  const auto ref_a = cpu_logits(GetParam(), a), ref_b = cpu_logits(GetParam(), b);
  latent_cache cache(model.cache_shape(dtype::f32, 8), 1 << 20, gpu);
  const std::vector<latent_cache::sequence_id> ids{cache.add_sequence(), cache.add_sequence()};
  double worst = 0.0;
  std::int64_t done_a = 0, done_b = 0;
  // A prefill of 20 and 5 tokens, then steps of 1 and 3 new tokens, then 1 and 1.
  while (done_a < 40) {
    const std::int64_t na = done_a == 0 ? 20 : 1;
    const std::int64_t nb =
        std::min<std::int64_t>(done_b == 0 ? 5 : (done_b < 26 ? 3 : 1), 30 - done_b);
    cache_step step(cache, ids, std::vector<std::int64_t>{na, nb});
    std::vector<std::int32_t> tokens(a.begin() + done_a, a.begin() + done_a + na);
    tokens.insert(tokens.end(), b.begin() + done_b, b.begin() + done_b + nb);
    const tensor hidden = model.forward(m.context, step, tokens);
    step.commit();
    worst = std::max(
        worst, error_at(model.logits(m.context, hidden, rows_from(0, na)), ref_a, done_a, vocab));
    if (nb > 0)
      worst = std::max(worst, error_at(model.logits(m.context, hidden, rows_from(na, nb)), ref_b,
                                       done_b, vocab));
    done_a += na;
    done_b += nb;
  }
  EXPECT_LE(worst, 1e-4);
  std::printf("[ gpu decode ] %-10s f32 cache: logits max relative error %.3g\n", GetParam(),
              worst);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DecodeOnCuda, ::testing::Values("q-lora", "no-q-lora", "yarn"),
                         [](const auto& test_info) {
                           std::string name = test_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(DecodeOnCudaBf16, ABf16CachePicksTheSameTokens) {
  TROUPE_SKIP_WITHOUT_GPU();
  model_on m("q-lora", gpu);
  cached_model model(m.runner);
  const std::int64_t vocab = model.config().vocab_size;
  const auto tokens = random_tokens(40, vocab, 23);
  const auto reference = cpu_logits("q-lora", tokens);
  latent_cache cache(model.cache_shape(dtype::bf16, 16), 1 << 20, gpu);
  const std::vector<latent_cache::sequence_id> ids{cache.add_sequence()};
  cache_step step(cache, ids, std::vector<std::int64_t>{40});
  const tensor logits =
      model.logits(m.context, model.forward(m.context, step, tokens), rows_from(0, 40));
  EXPECT_LE(error_at(logits, reference, 0, vocab), 2e-2);
  for (std::int64_t i = 0; i < 40; ++i) {
    const float* row = logits.data_as<float>() + i * vocab;
    const float* ref = reference.data() + i * vocab;
    EXPECT_EQ(std::max_element(row, row + vocab) - row, std::max_element(ref, ref + vocab) - ref)
        << "position " << i;
  }
}

TEST(DecodeOnCudaSpeculative, GreedyMtpTextIsTheCpuGreedyText) {
  TROUPE_SKIP_WITHOUT_GPU();
  generation_request request;
  request.prompt = random_tokens(7, 96, 24);
  request.max_new_tokens = 30;
  model_on cpu_model("q-lora", device::cpu());
  cached_model on_cpu(cpu_model.runner);
  latent_cache cpu_cache(on_cpu.cache_shape(dtype::f32, 8), 1 << 20, device::cpu());
  const generation_result plain = generate_sequence(on_cpu, cpu_cache, cpu_model.context, request);
  model_on gpu_model("q-lora", gpu);
  cached_model on_gpu(gpu_model.runner);
  latent_cache gpu_cache(on_gpu.cache_shape(dtype::f32, 8), 1 << 20, gpu);
  request.speculative_mtp = true;
  const generation_result speculative =
      generate_sequence(on_gpu, gpu_cache, gpu_model.context, request);
  EXPECT_EQ(plain.tokens, speculative.tokens);
  EXPECT_EQ(speculative.drafted, speculative.decode_forwards);
}

}  // namespace
