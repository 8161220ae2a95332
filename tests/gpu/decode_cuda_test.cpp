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
#include "runtime/model/model_config.hpp"
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

TEST(DecodeOnCudaWide, DeepSeekV3LatentWidthsMatchTheCpu) {
  // The fixtures' cache rows are 20-40 values wide; DeepSeek-V3's are 512 + 64 = 576 (and a
  // wider one takes the kernel's widest path): random weights of the same seed on both devices,
  // a prefill of 9 and 6 single steps, logits within 1e-4 of the CPU's cached decode.
  TROUPE_SKIP_WITHOUT_GPU();
  for (const std::int64_t rank : {512, 1024}) {
    nlohmann::json source =
        troupe::testing::read_json(troupe::testing::fixture_model("q-lora") / "config.json");
    source["kv_lora_rank"] = rank;
    source["qk_rope_head_dim"] = 64;
    const model_config config = parse_model_config(source, "wide config");
    std::vector<tensor> logits;
    for (const device where : {device::cpu(), gpu}) {
      plugin_registry registry;
      model_options options;
      options.where = where;
      model_runner runner(config, {}, load_model_plugins(registry, config), options);
      thread_pool pool(2);
      runner.parameters().initialize(77, &pool);
      exec_context context(where, pool);
      cached_model model(runner);
      latent_cache cache(model.cache_shape(dtype::f32, 4), 1 << 24, where);
      const std::vector<latent_cache::sequence_id> ids{cache.add_sequence()};
      const auto tokens = random_tokens(15, config.vocab_size, 25);
      std::vector<float> all;
      for (std::int64_t done = 0; done < 15;) {
        const std::int64_t n = done == 0 ? 9 : 1;
        cache_step step(cache, ids, std::vector<std::int64_t>{n});
        const tensor hidden = model.forward(
            context, step, std::span(tokens.data() + done, static_cast<std::size_t>(n)));
        step.commit();
        const tensor l = model.logits(context, hidden, rows_from(0, n));
        all.insert(all.end(), l.data_as<float>(), l.data_as<float>() + l.numel());
        done += n;
      }
      tensor t = tensor::empty(dtype::f32, {static_cast<std::int64_t>(all.size())});
      std::copy(all.begin(), all.end(), t.data_as<float>());
      logits.push_back(t);
    }
    const double error =
        troupe::testing::max_relative_error(logits[1].data_as<float>(), logits[0].data_as<float>(),
                                            static_cast<std::size_t>(logits[0].numel()));
    EXPECT_LE(error, 1e-4) << "kv_lora_rank " << rank;
    std::printf("[ gpu decode ] kv_lora_rank %ld + rope 64: logits max relative error %.3g\n",
                static_cast<long>(rank), error);
  }
}

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
