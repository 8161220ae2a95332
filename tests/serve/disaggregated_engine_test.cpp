// Disaggregated serving (runtime/serve/disaggregated_engine.hpp) on a transformers fixture: one
// prefill instance and two decode instances, each a model, a cache and a worker pool of its own.
// Requests from several threads get the tokens each gets alone (greedy, sampled, speculative,
// prompts read in chunks), and both decode instances take some; a cancelled request, queued or
// decoding, fails and every cache ends empty; the queue's bound refuses at once; caches of
// different shapes are refused before anything runs.
#include <gtest/gtest.h>

#include <memory>
#include <thread>

#include "runtime/serve/disaggregated_engine.hpp"
#include "tests/support/served_instance.hpp"

namespace {

using namespace troupe;

using instance = troupe::testing::served_instance;

generation_request request_for(int i) {
  generation_request r;
  r.prompt = troupe::testing::random_tokens(3 + i % 7, 96, 200 + static_cast<unsigned>(i));
  r.max_new_tokens = 3 + i % 9;
  if (i % 3 == 1) r.sampling = {0.9f, 20, 0.95f, static_cast<std::uint64_t>(i)};
  r.speculative_mtp = i % 4 == 2;
  return r;
}

TEST(DisaggregatedEngine, RequestsGetTheirAloneTokensAndBothDecodeInstancesWork) {
  instance prefill, decode_a, decode_b, reference;
  std::vector<std::vector<std::int32_t>> alone;
  for (int i = 0; i < 16; ++i)
    alone.push_back(
        generate_sequence(reference.model, reference.cache, reference.context, request_for(i))
            .tokens);
  disaggregated_options options;
  options.prefill_batch = 3;
  options.prefill_chunk = 4;
  disaggregated_engine engine({prefill.view()}, {decode_a.view(), decode_b.view()}, options);
  std::vector<std::vector<std::int32_t>> streamed(16), results(16);
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      std::vector<std::pair<int, std::future<generation_result>>> futures;
      for (int i = c; i < 16; i += 4)
        futures.emplace_back(i, engine.submit(request_for(i), [&, i](std::int32_t t) {
          streamed[static_cast<std::size_t>(i)].push_back(t);
        }));
      for (auto& [i, f] : futures) results[static_cast<std::size_t>(i)] = f.get().tokens;
    });
  for (auto& t : clients) t.join();
  for (std::size_t i = 0; i < 16; ++i) {
    EXPECT_EQ(results[i], alone[i]) << i;
    EXPECT_EQ(streamed[i], alone[i]) << i;
  }
  const auto taken = engine.decoded_per_instance();
  EXPECT_GE(taken[0], 1);
  EXPECT_GE(taken[1], 1);
  EXPECT_LE(taken[0] + taken[1], 16);  // a request that ends at its first token is not handed
  for (const latent_cache* c : {&prefill.cache, &decode_a.cache, &decode_b.cache})
    EXPECT_EQ(c->free_blocks(), c->total_blocks());
}

TEST(DisaggregatedEngine, CancelledRequestsFailAndTheCachesEndEmpty) {
  instance prefill, decode;
  disaggregated_options options;
  options.prefill_batch = 1;
  disaggregated_engine engine({prefill.view()}, {decode.view()}, options);
  // The first request's token callback holds the decode instance at its third token while the
  // test cancels it and a request still queued behind the prefill.
  std::promise<void> held, release;
  auto release_future = release.get_future();
  int tokens = 0;
  generation_request slow = request_for(0);
  slow.max_new_tokens = 40;
  request_engine::ticket slow_id = 0, queued_id = 0;
  auto slow_result = engine.submit(
      slow,
      [&](std::int32_t) {
        if (++tokens == 3) {
          held.set_value();
          release_future.wait();
        }
      },
      &slow_id);
  held.get_future().wait();
  auto queued = engine.submit(request_for(3), {}, &queued_id);
  engine.cancel(slow_id);
  release.set_value();
  engine.cancel(queued_id);
  EXPECT_THROW(slow_result.get(), troupe::error);
  try {
    queued.get();  // it may have finished before its cancel came: then it has its tokens
  } catch (const troupe::error& e) {
    EXPECT_STREQ(e.what(), "cancelled");
  }
  EXPECT_LT(tokens, 40);
  for (int i = 0; i < 200 && engine.decoding() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto after = engine.submit(request_for(5));  // the engine goes on
  EXPECT_EQ(after.get().tokens.size(), static_cast<std::size_t>(request_for(5).max_new_tokens));
  for (int i = 0; i < 200 && engine.decoding() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(prefill.cache.free_blocks(), prefill.cache.total_blocks());
  EXPECT_EQ(decode.cache.free_blocks(), decode.cache.total_blocks());
}

TEST(DisaggregatedEngine, AFullQueueRefusesAndMismatchedCachesAreRefused) {
  instance prefill, decode;
  {
    disaggregated_options options;
    options.max_queue = 0;
    disaggregated_engine engine({prefill.view()}, {decode.view()}, options);
    EXPECT_THROW(engine.submit(request_for(1)), queue_full);
  }
  latent_cache other(decode.model.cache_shape(dtype::bf16, 4), 1 << 20, device::cpu());
  try {
    disaggregated_engine engine({prefill.view()}, {{&decode.model, &other, &decode.context, {}}});
    ADD_FAILURE() << "caches of different shapes were taken";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("the prefill cache's shape"), std::string::npos);
  }
  EXPECT_THROW(disaggregated_engine({prefill.view()}, {}), troupe::error);
}

}  // namespace
