// Continuous batching (runtime/inference/batch_decoder.hpp) on the transformers fixtures: every
// sequence of a batch gets the tokens it gets alone, whatever joins or leaves the batch around it
// (greedy and sampled, plain and MTP speculative, prompts read whole or in chunks); stop at EOS
// and at max_new_tokens per sequence; cancellation gives the blocks back; a full cache fails a
// step without changing anything; bad requests are refused when added.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/inference/batch_decoder.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/support/fixture_model.hpp"

namespace {

using namespace troupe;

/// A fixture's model and the cached model over it.
struct loaded_model : troupe::testing::fixture_runner {
  explicit loaded_model(const char* fixture, bool mtp = true)
      : fixture_runner(fixture, device::cpu(), mtp), model(runner) {}
  cached_model model;
};

std::vector<std::int32_t> random_tokens(std::int64_t count, unsigned seed) {
  return troupe::testing::random_tokens(count, 96, seed);
}

std::vector<generation_request> mixed_requests() {
  std::vector<generation_request> requests(5);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    requests[i].prompt = random_tokens(static_cast<std::int64_t>(3 + 4 * i), 30 + unsigned(i));
    requests[i].max_new_tokens = static_cast<std::int64_t>(6 + 5 * i);
  }
  requests[1].sampling = {1.0f, 0, 0.9f, 7};
  requests[2].speculative_mtp = true;
  requests[3].sampling = {0.8f, 10, 1.0f, 8};
  requests[3].speculative_mtp = true;
  return requests;
}

TEST(BatchDecoder, EverySequenceGetsTheTokensItGetsAlone) {
  loaded_model m("q-lora");
  const auto requests = mixed_requests();
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  std::vector<std::vector<std::int32_t>> alone;
  for (const auto& r : requests)
    alone.push_back(generate_sequence(m.model, cache, m.context, r).tokens);
  for (const std::int64_t chunk : {0, 3}) {
    batch_decoder decoder(m.model, cache, m.context, {chunk});
    std::vector<batch_decoder::sequence_id> ids;
    std::map<batch_decoder::sequence_id, std::vector<std::int32_t>> streamed;
    // Two join now, the others after two and after five steps.
    for (std::size_t i = 0; i < 2; ++i) ids.push_back(decoder.add(requests[i]));
    for (int step = 0; decoder.active() > 0 || ids.size() < requests.size(); ++step) {
      if (step == 2) ids.push_back(decoder.add(requests[2]));
      if (step == 5)
        for (std::size_t i = 3; i < requests.size(); ++i) ids.push_back(decoder.add(requests[i]));
      for (const auto& e : decoder.step())
        streamed[e.id].insert(streamed[e.id].end(), e.tokens.begin(), e.tokens.end());
    }
    for (std::size_t i = 0; i < requests.size(); ++i) {
      const generation_result r = decoder.take_result(ids[i]);
      EXPECT_EQ(r.tokens, alone[i]) << "request " << i << ", prefill chunk " << chunk;
      EXPECT_EQ(streamed[ids[i]], alone[i]) << "request " << i;
      EXPECT_EQ(r.stop, "length");
    }
  }
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
}

TEST(BatchDecoder, TokensAndDraftsAreCountedAsMetrics) {
  loaded_model m("q-lora");
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  metrics_registry metrics;
  batch_decoder decoder(m.model, cache, m.context, {0, &metrics});
  const auto requests = mixed_requests();
  std::vector<batch_decoder::sequence_id> ids;
  for (const auto& r : requests) ids.push_back(decoder.add(r));
  while (decoder.active() > 0) decoder.step();
  double generated = 0, drafted = 0, accepted = 0;
  for (const auto id : ids) {
    const generation_result r = decoder.take_result(id);
    generated += static_cast<double>(r.tokens.size());
    drafted += static_cast<double>(r.drafted);
    accepted += static_cast<double>(r.accepted);
  }
  EXPECT_EQ(metrics.tokens_generated_total(), generated);
  EXPECT_EQ(metrics.speculative_drafted_total(), drafted);
  EXPECT_EQ(metrics.speculative_accepted_total(), accepted);
  EXPECT_GT(drafted, 0);
}

TEST(BatchDecoder, EachSequenceStopsAtItsOwnEos) {
  loaded_model m("no-q-lora");
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  generation_request request;
  request.prompt = random_tokens(5, 40);
  request.max_new_tokens = 12;
  const auto free_run = generate_sequence(m.model, cache, m.context, request).tokens;
  request.eos = free_run[4];
  const std::size_t stop = static_cast<std::size_t>(
      std::find(free_run.begin(), free_run.end(), *request.eos) - free_run.begin());
  batch_decoder decoder(m.model, cache, m.context);
  const auto with_eos = decoder.add(request);
  generation_request other = request;
  other.eos.reset();
  const auto without = decoder.add(other);
  while (decoder.active() > 0) decoder.step();
  const generation_result stopped = decoder.take_result(with_eos);
  EXPECT_EQ(stopped.stop, "eos");
  EXPECT_EQ(stopped.tokens,
            std::vector<std::int32_t>(free_run.begin(), free_run.begin() + long(stop) + 1));
  EXPECT_EQ(decoder.take_result(without).tokens, free_run);
}

TEST(BatchDecoder, ACancelledSequenceGivesItsBlocksBackAndTheOthersGoOn) {
  loaded_model m("q-lora");
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  const auto requests = mixed_requests();
  const auto alone = generate_sequence(m.model, cache, m.context, requests[3]).tokens;
  batch_decoder decoder(m.model, cache, m.context);
  const auto gone = decoder.add(requests[4]);
  const auto kept = decoder.add(requests[3]);
  decoder.step();
  decoder.step();
  const std::int64_t free_before = cache.free_blocks();
  decoder.cancel(gone);
  EXPECT_GT(cache.free_blocks(), free_before);
  decoder.cancel(gone);  // again: ignored
  std::vector<std::int32_t> tokens;
  // What the two steps gave `kept` is in its result at the end.
  while (decoder.active() > 0)
    for (const auto& e : decoder.step()) EXPECT_NE(e.id, gone);
  EXPECT_EQ(decoder.take_result(kept).tokens, alone);
  EXPECT_THROW(decoder.take_result(gone), troupe::error);
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
}

TEST(BatchDecoder, AFullCacheFailsTheStepAndChangesNothing) {
  loaded_model m("q-lora");
  const latent_cache_shape shape = m.model.cache_shape(dtype::f32, 4);
  latent_cache cache(shape, static_cast<std::uint64_t>(4 * shape.bytes_per_block()), device::cpu());
  generation_request small;
  small.prompt = random_tokens(6, 50);
  small.max_new_tokens = 4;
  generation_request big = small;
  big.prompt = random_tokens(12, 51);
  batch_decoder decoder(m.model, cache, m.context);
  const auto a = decoder.add(small), b = decoder.add(big);  // 2 + 3 blocks: one too many
  try {
    decoder.step();
    FAIL() << "five blocks from four";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("the KV cache is full"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.free_blocks(), 4);
  decoder.cancel(b);
  while (decoder.active() > 0) decoder.step();
  EXPECT_EQ(decoder.take_result(a).tokens,
            generate_sequence(m.model, cache, m.context, small).tokens);
}

TEST(BatchDecoder, ASequencePrefilledByOneDecoderAndDecodedByAnotherGetsItsAloneTokens) {
  // Disaggregated prefill and decode in one process: the prefill decoder reads the prompts
  // (in chunks) and hands each sequence off with its rows; the decode decoder, over another
  // cache whose blocks lie elsewhere, decodes them among a sequence of its own.
  loaded_model m("q-lora");
  const auto requests = mixed_requests();
  const latent_cache_shape shape = m.model.cache_shape(dtype::f32, 4);
  latent_cache alone_cache(shape, 1 << 20, device::cpu());
  std::vector<std::vector<std::int32_t>> alone;
  for (const auto& r : requests)
    alone.push_back(generate_sequence(m.model, alone_cache, m.context, r).tokens);
  latent_cache prefill_cache(shape, 1 << 20, device::cpu()),
      decode_cache(shape, 1 << 21, device::cpu());
  batch_decoder prefill(m.model, prefill_cache, m.context, {3});
  batch_decoder decode(m.model, decode_cache, m.context);
  // A sequence of the decoder's own first, so that the hand-offs' blocks are not its first ones.
  const auto own = decode.add(requests[4]);
  std::map<batch_decoder::sequence_id, std::size_t> prefilling, decoding{{own, 4}};
  for (std::size_t i = 0; i < 4; ++i) {
    generation_request r = requests[i];
    r.prefill_only = true;
    prefilling[prefill.add(r)] = i;
  }
  std::vector<std::vector<std::int32_t>> got(requests.size());
  while (prefill.active() > 0 || decode.active() > 0) {
    for (const auto& e : prefill.step()) {
      const std::size_t i = prefilling.at(e.id);
      got[i].insert(got[i].end(), e.tokens.begin(), e.tokens.end());
      ASSERT_FALSE(e.finished);  // none ends at its first token
      if (e.handed_off) decoding[decode.add_handoff(prefill.take_handoff(e.id))] = i;
    }
    EXPECT_EQ(prefill_cache.sequences(), prefill.active());  // a hand-off's blocks are free
    for (const auto& e : decode.step()) {
      const std::size_t i = decoding.at(e.id);
      got[i].insert(got[i].end(), e.tokens.begin(), e.tokens.end());
      if (e.finished) {
        EXPECT_EQ(decode.take_result(e.id).tokens, alone[i]) << i;
      }
    }
  }
  for (std::size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(got[i], alone[i]) << i;
  EXPECT_EQ(prefill_cache.free_blocks(), prefill_cache.total_blocks());
  EXPECT_EQ(decode_cache.free_blocks(), decode_cache.total_blocks());
}

TEST(BatchDecoder, AHandoffThatDoesNotFitOrDoesNotMatchChangesNothing) {
  loaded_model m("q-lora");
  const latent_cache_shape shape = m.model.cache_shape(dtype::f32, 4);
  latent_cache prefill_cache(shape, 1 << 20, device::cpu());
  latent_cache tiny(shape, static_cast<std::uint64_t>(shape.bytes_per_block()), device::cpu());
  batch_decoder prefill(m.model, prefill_cache, m.context);
  generation_request r;
  r.prompt = random_tokens(9, 5);  // three blocks of 4
  r.max_new_tokens = 4;
  r.prefill_only = true;
  const auto id = prefill.add(r);
  ASSERT_TRUE(prefill.step().at(0).handed_off);
  sequence_handoff handoff = prefill.take_handoff(id);
  EXPECT_EQ(handoff.rows.length, 9);
  batch_decoder small(m.model, tiny, m.context);
  EXPECT_THROW(small.add_handoff(handoff), troupe::error);
  EXPECT_EQ(tiny.free_blocks(), tiny.total_blocks());
  EXPECT_EQ(small.active(), 0);
  latent_cache_shape other = shape;
  other.block_tokens = 8;
  latent_cache wide(other, 1 << 20, device::cpu());
  try {
    wide.import_rows(handoff.rows);
    ADD_FAILURE() << "rows of another shape were taken";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("in blocks of 4 cannot go into a cache"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(wide.sequences(), 0);
}

TEST(BatchDecoder, BadRequestsAreRefusedWhenAdded) {
  loaded_model m("q-lora", false);
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  batch_decoder decoder(m.model, cache, m.context);
  const auto message = [&](const generation_request& r) {
    try {
      decoder.add(r);
    } catch (const troupe::error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  generation_request r;
  EXPECT_NE(message(r).find("a prompt of at least one token"), std::string::npos);
  r.prompt = {3, 96};
  EXPECT_NE(message(r).find("prompt token 96 (at 1) is outside the model's vocabulary of 96"),
            std::string::npos);
  r.prompt = {3, 4};
  r.max_new_tokens = 0;
  EXPECT_NE(message(r).find("max_new_tokens is 0"), std::string::npos);
  r.max_new_tokens = 4;
  r.sampling.top_p = 0.0f;
  EXPECT_NE(message(r).find("top_p"), std::string::npos);
  r.sampling.top_p = 1.0f;
  r.speculative_mtp = true;  // this runner was built without its MTP module
  EXPECT_NE(message(r).find("needs an MTP module; this model has none"), std::string::npos);
  EXPECT_EQ(decoder.active(), 0);
  EXPECT_EQ(cache.sequences(), 0);
}

}  // namespace
