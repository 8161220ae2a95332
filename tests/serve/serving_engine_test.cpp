// The serving engine (runtime/serve/serving_engine.hpp) on a transformers fixture: requests from
// several threads at once get the tokens each gets alone (greedy, sampled, speculative), streamed
// in order; the queue's bound refuses a request at once; a cancelled request fails and gives its
// cache back; a bad request fails alone; a request that does not fit the cache fails alone while
// the older ones finish.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

#include <prometheus/registry.h>

#include "runtime/serve/serving_engine.hpp"
#include "tests/support/fixture_model.hpp"

namespace {

using namespace troupe;

struct served_model : troupe::testing::fixture_runner {
  served_model() : fixture_runner("q-lora"), model(runner) {}
  cached_model model;
};

generation_request request_for(int i) {
  generation_request r;
  r.prompt = troupe::testing::random_tokens(3 + i % 5, 96, 100 + static_cast<unsigned>(i));
  r.max_new_tokens = 4 + i % 7;
  if (i % 3 == 1) r.sampling = {0.9f, 20, 0.95f, static_cast<std::uint64_t>(i)};
  r.speculative_mtp = i % 4 == 2;
  return r;
}

TEST(ServingEngine, ConcurrentRequestsGetTheirAloneTokens) {
  served_model m;
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 22, device::cpu());
  std::vector<std::vector<std::int32_t>> alone;
  for (int i = 0; i < 12; ++i)
    alone.push_back(generate_sequence(m.model, cache, m.context, request_for(i)).tokens);
  serving_engine engine(m.model, cache, m.context, {4, 64, 3, nullptr, nullptr, {}});
  std::vector<std::vector<std::int32_t>> streamed(12), results(12);
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      for (int i = c; i < 12; i += 4) {
        auto future = engine.submit(request_for(i), [&, i](std::int32_t t) {
          streamed[static_cast<std::size_t>(i)].push_back(t);
        });
        results[static_cast<std::size_t>(i)] = future.get().tokens;
      }
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(results[static_cast<std::size_t>(i)], alone[static_cast<std::size_t>(i)]) << i;
    EXPECT_EQ(streamed[static_cast<std::size_t>(i)], alone[static_cast<std::size_t>(i)]) << i;
  }
  EXPECT_EQ(engine.queued(), 0);
}

TEST(ServingEngine, ExpertLoadIsCountedPerLayerAndExpertAsTrainingCountsIt) {
  // Layers 1 and 2 of the fixture are MoE layers (8 experts, top 2): every token a forward reads
  // is routed twice in each, the prompt's and each decoded token's but the last.
  served_model m;
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 22, device::cpu());
  prometheus::Registry registry;
  serving_metrics metrics(registry);
  serving_options options;
  options.serve_metrics = &metrics;
  serving_engine engine(m.model, cache, m.context, options);
  generation_request r;
  r.prompt = troupe::testing::random_tokens(7, 96, 3);
  r.max_new_tokens = 5;
  EXPECT_EQ(engine.submit(r).get().tokens.size(), 5u);
  for (const std::int64_t layer : {1, 2}) {
    double routed = 0;
    for (std::int64_t e = 0; e < 8; ++e) routed += metrics.expert_tokens_total(layer, e);
    EXPECT_EQ(routed, (7 + 5 - 1) * 2) << "layer " << layer;
  }
  EXPECT_EQ(metrics.expert_tokens_total(0, 0), 0.0);  // the dense layer routes nothing
}

TEST(ServingEngine, AFullQueueRefusesAtOnce) {
  served_model m;
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 22, device::cpu());
  serving_engine engine(m.model, cache, m.context, {1, 2, 0, nullptr, nullptr, {}});
  generation_request slow = request_for(0);
  slow.max_new_tokens = 200;
  std::vector<std::future<generation_result>> accepted;
  int refused = 0;
  for (int i = 0; i < 10; ++i) {
    try {
      accepted.push_back(engine.submit(slow));
    } catch (const queue_full& e) {
      ++refused;
      EXPECT_NE(std::string(e.what()).find("the queue is full"), std::string::npos);
    }
  }
  EXPECT_GE(refused, 7);  // one decoding and two queued at most
  for (auto& f : accepted) EXPECT_EQ(f.get().tokens.size(), 200u);
}

TEST(ServingEngine, CancelledAndBadRequestsFailAloneAndGiveTheCacheBack) {
  served_model m;
  latent_cache cache(m.model.cache_shape(dtype::f32, 4), 1 << 22, device::cpu());
  serving_engine engine(m.model, cache, m.context);
  generation_request endless = request_for(0);
  endless.max_new_tokens = 100000;
  std::atomic<int> seen{0};
  serving_engine::ticket id = 0;
  auto cancelled = engine.submit(
      endless, [&](std::int32_t) { ++seen; }, &id);
  generation_request bad = request_for(1);
  bad.prompt.push_back(96);  // outside the vocabulary
  auto refused = engine.submit(bad);
  auto fine = engine.submit(request_for(2));
  while (seen.load() < 5) std::this_thread::yield();
  engine.cancel(id);
  EXPECT_THROW(cancelled.get(), troupe::error);
  try {
    refused.get();
    FAIL() << "a prompt token outside the vocabulary";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the model's vocabulary"), std::string::npos);
  }
  EXPECT_EQ(fine.get().tokens.size(), static_cast<std::size_t>(request_for(2).max_new_tokens));
  while (engine.decoding() > 0) std::this_thread::yield();
  EXPECT_EQ(cache.free_blocks(), cache.total_blocks());
}

TEST(ServingEngine, ARequestThatDoesNotFitTheCacheFailsAlone) {
  served_model m;
  const latent_cache_shape shape = m.model.cache_shape(dtype::f32, 4);
  latent_cache cache(shape, static_cast<std::uint64_t>(6 * shape.bytes_per_block()), device::cpu());
  serving_engine engine(m.model, cache, m.context);
  generation_request first = request_for(0);  // 3 + 4 tokens: 2 blocks
  generation_request huge = request_for(0);
  huge.prompt = troupe::testing::random_tokens(40, 96, 9);  // 10 blocks: never fits
  auto a = engine.submit(first);
  auto b = engine.submit(huge);
  EXPECT_EQ(a.get().tokens.size(), 4u);
  try {
    b.get();
    FAIL() << "40 tokens in a cache of 24";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("the KV cache is full"), std::string::npos) << e.what();
  }
}

}  // namespace
