// Decoding over MLA's paged latent cache against the full recompute: the training forward of the
// whole sequence (itself equal to transformers, tests/model/parity_test.cpp) gives the reference
// logits at every position. With an f32 cache every position's logits match it to a relative
// error of 1e-5 (max |a - b| / max |b|): prefill, one token at a time across block boundaries,
// several sequences of different lengths in one step, a rolled-back draft, and the MTP module's
// logits. A BF16 cache (DeepSeek's inference layout) stays within 2e-2 and picks the same tokens.
// Greedy generation (plain and speculative) equals transformers' greedy generation with its
// cache on every fixture (generate.json). MTP speculative decoding gives greedy decoding's exact
// text, and its sampled tokens follow the
// main model's distribution: the second token's frequencies over 2,000 seeds are within a total
// variation distance of 0.06 of the exact marginal (sampling noise alone is about 0.02). The
// fixtures' MTP modules are random, so their drafts are mostly rejected; the kept-draft side of
// the test is tests/inference/inference_test.cpp's
// Sampler.VerifiedDraftsFollowTheTargetDistribution.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/inference/cached_model.hpp"
#include "runtime/inference/generation.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/support/fixture_model.hpp"
#include "tests/support/fixtures.hpp"

namespace {

using namespace troupe;

constexpr double f32_tolerance = 1e-5;

using loaded_model = troupe::testing::fixture_runner;
using troupe::testing::random_tokens;

/// The training forward's logits [length, vocab] and MTP depth-1 logits for one sequence.
struct full_logits {
  std::vector<float> main, mtp;
};
full_logits full_recompute(loaded_model& m, const std::vector<std::int32_t>& tokens) {
  const auto length = static_cast<std::int64_t>(tokens.size());
  model_batch batch;
  batch.tokens = tensor::empty(dtype::i32, {1, length});
  std::copy(tokens.begin(), tokens.end(), batch.tokens.data_as<std::int32_t>());
  const model_output out = m.runner.forward(m.context, 0, batch, true);
  m.runner.forget(0);
  full_logits f;
  f.main.assign(out.logits.data_as<float>(), out.logits.data_as<float>() + out.logits.numel());
  f.mtp.assign(out.mtp_logits[0].data_as<float>(),
               out.mtp_logits[0].data_as<float>() + out.mtp_logits[0].numel());
  return f;
}

/// Relative error of `count` rows of logits against rows from `first` of the reference.
double row_error(const tensor& logits, const std::vector<float>& reference, std::int64_t first,
                 std::int64_t vocab) {
  return troupe::testing::max_relative_error(logits.data_as<float>(),
                                             reference.data() + first * vocab,
                                             static_cast<std::size_t>(logits.numel()));
}

std::vector<std::int64_t> iota_rows(std::int64_t count, std::int64_t first = 0) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) rows[static_cast<std::size_t>(i)] = first + i;
  return rows;
}

/// Runs `tokens` of one sequence through the cache: a prefill of `prefill` tokens, then one
/// token per step; returns the largest relative error of any position's logits.
double decode_error(loaded_model& m, cached_model& model, latent_cache& cache,
                    const std::vector<std::int32_t>& tokens, std::int64_t prefill,
                    const std::vector<float>& reference) {
  const std::int64_t vocab = model.config().vocab_size;
  const auto id = cache.add_sequence();
  double worst = 0.0;
  for (std::int64_t done = 0; done < static_cast<std::int64_t>(tokens.size());) {
    const std::int64_t fresh = done == 0 ? prefill : 1;
    const std::vector<latent_cache::sequence_id> ids{id};
    const std::vector<std::int64_t> counts{fresh};
    cache_step step(cache, ids, counts);
    const std::span<const std::int32_t> part(tokens.data() + done, static_cast<std::size_t>(fresh));
    const tensor hidden = model.forward(m.context, step, part);
    step.commit();
    worst = std::max(worst, row_error(model.logits(m.context, hidden, iota_rows(fresh)), reference,
                                      done, vocab));
    done += fresh;
  }
  cache.release(id);
  return worst;
}

class CachedDecode : public ::testing::TestWithParam<const char*> {};
class GreedyAsTransformers : public ::testing::TestWithParam<const char*> {};

TEST_P(CachedDecode, EveryPositionMatchesTheFullRecompute) {
  loaded_model m(GetParam());
  cached_model model(m.runner);
  const auto tokens = random_tokens(80, model.config().vocab_size, 7);
  const full_logits full = full_recompute(m, tokens);
  // Blocks of 8 tokens: the prefill of 70 spans 9 blocks and two query chunks of 64.
  latent_cache cache(model.cache_shape(dtype::f32, 8), 1 << 20, device::cpu());
  const double error = decode_error(m, model, cache, tokens, 70, full.main);
  EXPECT_LE(error, f32_tolerance);
  std::printf("[ decode ] %-10s f32 cache: logits max relative error %.3g\n", GetParam(), error);
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
}

TEST_P(GreedyAsTransformers, WithTheCacheAndWithMtpDrafts) {
  // tests/fixtures/models/NAME/generate.json: transformers' greedy continuation with its own KV
  // cache, in float64 (tools/reference/make_generate_fixture.py; the FP8 checkpoint's weights
  // decoded as troupe decodes them); EOS does not stop it.
  loaded_model m(GetParam());
  cached_model model(m.runner);
  const auto reference =
      troupe::testing::read_json(troupe::testing::fixture_model(GetParam()) / "generate.json");
  generation_request request;
  request.prompt = reference["prompt"].get<std::vector<std::int32_t>>();
  const auto expected = reference["generated"].get<std::vector<std::int32_t>>();
  request.max_new_tokens = static_cast<std::int64_t>(expected.size());
  latent_cache cache(model.cache_shape(dtype::f32, 8), 1 << 20, device::cpu());
  EXPECT_EQ(generate_sequence(model, cache, m.context, request).tokens, expected);
  request.speculative_mtp = true;
  EXPECT_EQ(generate_sequence(model, cache, m.context, request).tokens, expected);
}

std::string fixture_name(const ::testing::TestParamInfo<const char*>& test_info) {
  std::string name = test_info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CachedDecode,
                         ::testing::Values("q-lora", "no-q-lora", "yarn", "groups", "fp8"),
                         fixture_name);
INSTANTIATE_TEST_SUITE_P(Fixtures, GreedyAsTransformers,
                         ::testing::Values("q-lora", "no-q-lora", "yarn", "groups", "fp8"),
                         fixture_name);

TEST(CachedDecode, SequencesOfDifferentLengthsShareAStep) {
  loaded_model m("q-lora");
  cached_model model(m.runner);
  const std::int64_t vocab = model.config().vocab_size;
  const auto a = random_tokens(9, vocab, 1), b = random_tokens(6, vocab, 2);
  const full_logits full_a = full_recompute(m, a), full_b = full_recompute(m, b);
  latent_cache cache(model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  const std::vector<latent_cache::sequence_id> ids{cache.add_sequence(), cache.add_sequence()};
  // Step 1: a's first 5 tokens and b's first 2; step 2: a's next 1 and b's next 4.
  const std::vector<std::vector<std::int64_t>> counts{{5, 2}, {1, 4}, {3, 0}};
  std::int64_t done_a = 0, done_b = 0;
  for (const auto& c : counts) {
    cache_step step(cache, ids, c);
    std::vector<std::int32_t> tokens(a.begin() + done_a, a.begin() + done_a + c[0]);
    tokens.insert(tokens.end(), b.begin() + done_b, b.begin() + done_b + c[1]);
    const tensor hidden = model.forward(m.context, step, tokens);
    step.commit();
    EXPECT_LE(
        row_error(model.logits(m.context, hidden, iota_rows(c[0])), full_a.main, done_a, vocab),
        f32_tolerance);
    if (c[1] > 0) {
      EXPECT_LE(row_error(model.logits(m.context, hidden, iota_rows(c[1], c[0])), full_b.main,
                          done_b, vocab),
                f32_tolerance);
    }
    done_a += c[0];
    done_b += c[1];
  }
  EXPECT_EQ(cache.length(ids[0]), 9);
  EXPECT_EQ(cache.length(ids[1]), 6);
}

TEST(CachedDecode, ARolledBackDraftLeavesNoTrace) {
  loaded_model m("no-q-lora");
  cached_model model(m.runner);
  const std::int64_t vocab = model.config().vocab_size;
  const auto tokens = random_tokens(12, vocab, 3);
  const full_logits full = full_recompute(m, tokens);
  latent_cache cache(model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  const std::vector<latent_cache::sequence_id> ids{cache.add_sequence()};
  {
    cache_step step(cache, ids, std::vector<std::int64_t>{6});
    model.forward(m.context, step, std::span(tokens.data(), 6));
    step.commit();
  }
  {  // tokens 6 and a wrong draft; keep only token 6
    cache_step step(cache, ids, std::vector<std::int64_t>{2});
    const std::vector<std::int32_t> drafted{tokens[6], (tokens[7] + 1) % 96};
    model.forward(m.context, step, drafted);
    step.commit();
    cache.truncate(ids[0], 7);
  }
  cache_step step(cache, ids, std::vector<std::int64_t>{5});
  const tensor hidden = model.forward(m.context, step, std::span(tokens.data() + 7, 5));
  EXPECT_LE(row_error(model.logits(m.context, hidden, iota_rows(5)), full.main, 7, vocab),
            f32_tolerance);
}

TEST(CachedDecode, TheMtpModuleMatchesTheFullRecompute) {
  loaded_model m("q-lora");
  cached_model model(m.runner);
  ASSERT_EQ(model.mtp_depth(), 1);
  const std::int64_t vocab = model.config().vocab_size;
  const auto tokens = random_tokens(20, vocab, 4);
  const full_logits full = full_recompute(m, tokens);
  latent_cache cache(model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  const std::vector<latent_cache::sequence_id> ids{cache.add_sequence()};
  // The MTP module at position i sees the main model's hidden state at i and token i + 1: feed
  // positions 0..18 (the last has no next token), 10 at once and then one by one.
  double worst = 0.0;
  for (std::int64_t done = 0; done < 19;) {
    const std::int64_t fresh = done == 0 ? 10 : 1;
    cache_step step(cache, ids, std::vector<std::int64_t>{fresh});
    const tensor hidden = model.forward(m.context, step, std::span(tokens.data() + done, fresh));
    const tensor mtp_hidden =
        model.mtp_forward(m.context, 1, step, hidden, std::span(tokens.data() + done + 1, fresh));
    step.commit();
    worst = std::max(worst, row_error(model.logits(m.context, mtp_hidden, iota_rows(fresh), 1),
                                      full.mtp, done, vocab));
    done += fresh;
  }
  EXPECT_LE(worst, f32_tolerance);
  std::printf("[ decode ] MTP logits max relative error %.3g\n", worst);
}

TEST(CachedDecode, ABf16CacheStaysCloseAndPicksTheSameTokens) {
  loaded_model m("q-lora");
  cached_model model(m.runner);
  const std::int64_t vocab = model.config().vocab_size;
  const auto tokens = random_tokens(40, vocab, 5);
  const full_logits full = full_recompute(m, tokens);
  latent_cache cache(model.cache_shape(dtype::bf16, 16), 1 << 20, device::cpu());
  const auto id = cache.add_sequence();
  const std::vector<latent_cache::sequence_id> ids{id};
  cache_step step(cache, ids, std::vector<std::int64_t>{40});
  const tensor logits =
      model.logits(m.context, model.forward(m.context, step, tokens), iota_rows(40));
  EXPECT_LE(row_error(logits, full.main, 0, vocab), 2e-2);
  for (std::int64_t i = 0; i < 40; ++i) {
    const float* row = logits.data_as<float>() + i * vocab;
    const float* ref = full.main.data() + i * vocab;
    EXPECT_EQ(std::max_element(row, row + vocab) - row, std::max_element(ref, ref + vocab) - ref)
        << "position " << i;
  }
}

TEST(CachedDecode, AFullCacheIsAClearErrorAndReservesNothing) {
  loaded_model m("q-lora");
  cached_model model(m.runner);
  const latent_cache_shape shape = model.cache_shape(dtype::f32, 4);
  latent_cache cache(shape, static_cast<std::uint64_t>(2 * shape.bytes_per_block()), device::cpu());
  const std::vector<latent_cache::sequence_id> ids{cache.add_sequence(), cache.add_sequence()};
  try {
    cache_step step(cache, ids, std::vector<std::int64_t>{5, 4});
    FAIL() << "three blocks from a pool of two";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("the KV cache is full: this step needs 3 more blocks"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(cache.free_blocks(), 2);
}

/// Plain generation and MTP speculative generation of the same request.
std::pair<generation_result, generation_result> both_ways(loaded_model& m, cached_model& model,
                                                          generation_request request) {
  latent_cache cache(model.cache_shape(dtype::f32, 8), 1 << 20, device::cpu());
  request.speculative_mtp = false;
  generation_result plain = generate_sequence(model, cache, m.context, request);
  request.speculative_mtp = true;
  generation_result speculative = generate_sequence(model, cache, m.context, request);
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
  return {plain, speculative};
}

TEST(SpeculativeDecoding, GreedyTextIsPlainGreedyText) {
  for (const char* fixture : {"q-lora", "yarn"}) {
    loaded_model m(fixture);
    cached_model model(m.runner);
    generation_request request;
    request.prompt = random_tokens(7, model.config().vocab_size, 11);
    request.max_new_tokens = 40;
    const auto [plain, speculative] = both_ways(m, model, request);
    EXPECT_EQ(plain.tokens, speculative.tokens) << fixture;
    ASSERT_EQ(speculative.tokens.size(), 40u);
    EXPECT_EQ(plain.decode_forwards, 39);
    // Each decode forward verifies one draft and yields one token, or two when it keeps it.
    EXPECT_EQ(speculative.drafted, speculative.decode_forwards);
    EXPECT_GE(speculative.decode_forwards + speculative.accepted, 39);
    EXPECT_LE(speculative.decode_forwards + speculative.accepted, 40);
    std::printf("[ decode ] %-10s speculative greedy: %ld of %ld drafts kept\n", fixture,
                static_cast<long>(speculative.accepted), static_cast<long>(speculative.drafted));
  }
}

TEST(SpeculativeDecoding, SampledTokensFollowTheMainModel) {
  loaded_model m("q-lora");
  cached_model model(m.runner);
  const std::int64_t vocab = model.config().vocab_size;
  generation_request request;
  request.prompt = random_tokens(5, vocab, 12);
  request.max_new_tokens = 2;
  request.sampling = {1.0f, 4, 1.0f, 0};
  request.speculative_mtp = true;
  // The exact marginal of the second token: sum over t0 of p(t0) p(t1 | prompt, t0).
  std::vector<float> first(static_cast<std::size_t>(vocab)), second(first.size());
  std::vector<double> exact(first.size(), 0.0);
  const full_logits prompt_only = full_recompute(m, request.prompt);
  sampling_distribution(
      std::span(prompt_only.main)
          .subspan(4 * static_cast<std::size_t>(vocab), static_cast<std::size_t>(vocab)),
      request.sampling, first);
  for (std::int64_t t0 = 0; t0 < vocab; ++t0) {
    if (first[static_cast<std::size_t>(t0)] == 0.0f) continue;
    auto extended = request.prompt;
    extended.push_back(static_cast<std::int32_t>(t0));
    const full_logits f = full_recompute(m, extended);
    sampling_distribution(std::span(f.main).subspan(5 * static_cast<std::size_t>(vocab),
                                                    static_cast<std::size_t>(vocab)),
                          request.sampling, second);
    for (std::size_t t = 0; t < exact.size(); ++t)
      exact[t] +=
          static_cast<double>(first[static_cast<std::size_t>(t0)]) * static_cast<double>(second[t]);
  }
  latent_cache cache(model.cache_shape(dtype::f32, 8), 1 << 20, device::cpu());
  const int runs = 2000;
  std::vector<double> seen(exact.size(), 0.0);
  std::int64_t drafted = 0, accepted = 0;
  for (int seed = 0; seed < runs; ++seed) {
    request.sampling.seed = static_cast<std::uint64_t>(seed);
    const generation_result r = generate_sequence(model, cache, m.context, request);
    ASSERT_EQ(r.tokens.size(), 2u);
    seen[static_cast<std::size_t>(r.tokens[1])] += 1.0 / runs;
    drafted += r.drafted;
    accepted += r.accepted;
  }
  double distance = 0.0;
  for (std::size_t t = 0; t < exact.size(); ++t) distance += 0.5 * std::abs(seen[t] - exact[t]);
  EXPECT_LE(distance, 0.06);
  EXPECT_EQ(drafted, runs);
  std::printf("[ decode ] speculative sampling: total variation %.4f, %ld of %ld drafts kept\n",
              distance, static_cast<long>(accepted), static_cast<long>(drafted));
}

}  // namespace
