// Decode through actors (runtime/serve/remote_decode.hpp), within one process: the serving
// engine's prefill instance hands every sequence to a decode-only engine through the decode
// actor, and the tokens come back through the front actor; requests from several threads
// (greedy, sampled, speculative) get the tokens each gets alone, streamed in order; a hand-off
// survives its wire form bit for bit; a cancelled request fails and the decode side's cache ends
// empty; a lost decoder fails what it held with the reason and refuses new requests.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/serve/remote_decode.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/served_instance.hpp"

namespace {

using namespace troupe;

using instance = troupe::testing::served_instance;

generation_request request_for(int i) {
  generation_request r;
  r.prompt = troupe::testing::random_tokens(3 + i % 7, 96, 300 + static_cast<unsigned>(i));
  r.max_new_tokens = 3 + i % 9;
  if (i % 3 == 1) r.sampling = {0.9f, 20, 0.95f, static_cast<std::uint64_t>(i)};
  r.speculative_mtp = i % 4 == 2;
  return r;
}

TEST(RemoteDecode, AHandoffSurvivesItsWireForm) {
  sequence_handoff h;
  h.request = request_for(1);
  h.request.eos = 7;
  h.result.tokens = {5};
  h.result.prompt_seconds = 0.25;
  h.token = 5;
  h.draft = 9;
  h.draft_distribution = {0.5f, 0.25f};
  h.rows.shape = {3, 32, 16, dtype::bf16, 4};
  h.rows.length = 6;
  h.rows.blocks = tensor::zeros(dtype::u8, {2 * h.rows.shape.bytes_per_block()});
  h.rows.blocks.data_as<std::uint8_t>()[17] = 42;
  const sequence_handoff back = from_fields(to_fields(h));
  EXPECT_EQ(back.request.prompt, h.request.prompt);
  EXPECT_EQ(back.request.eos, 7);
  EXPECT_EQ(back.request.sampling.seed, h.request.sampling.seed);
  EXPECT_EQ(back.result.tokens, h.result.tokens);
  EXPECT_EQ(back.result.prompt_seconds, 0.25);
  EXPECT_EQ(back.draft, 9);
  EXPECT_EQ(back.draft_distribution, h.draft_distribution);
  EXPECT_EQ(back.rows.shape.type, dtype::bf16);
  EXPECT_EQ(back.rows.length, 6);
  EXPECT_EQ(back.rows.blocks.data_as<std::uint8_t>()[17], 42);
}

TEST(RemoteDecode, SequencesDecodedThroughActorsGetTheirAloneTokens) {
  instance prefill, decode, reference;
  std::vector<std::vector<std::int32_t>> alone;
  for (int i = 0; i < 12; ++i)
    alone.push_back(
        generate_sequence(reference.model, reference.cache, reference.context, request_for(i))
            .tokens);
  actor_runtime runtime;
  auto decoder = std::make_shared<disaggregated_engine>(
      std::vector<serving_instance>{}, std::vector<serving_instance>{decode.view()});
  actor_remote_decoder link(runtime, spawn_decode_actor(runtime, decoder));
  disaggregated_options options;
  options.prefill_batch = 3;
  std::vector<std::vector<std::int32_t>> streamed(12), results(12);
  {
    disaggregated_engine engine({prefill.view()}, {}, options, {&link});
    link.connect(engine, 0);
    std::vector<std::thread> clients;
    for (int c = 0; c < 3; ++c)
      clients.emplace_back([&, c] {
        for (int i = c; i < 12; i += 3)
          results[static_cast<std::size_t>(i)] =
              engine
                  .submit(request_for(i),
                          [&, i](std::int32_t t) {
                            streamed[static_cast<std::size_t>(i)].push_back(t);
                          })
                  .get()
                  .tokens;
      });
    for (auto& t : clients) t.join();
    EXPECT_EQ(engine.decoded_per_instance(), std::vector<std::int64_t>{12});

    // A long request cancelled while it decodes on the other side.
    generation_request long_one = request_for(0);
    long_one.max_new_tokens = 60;
    request_engine::ticket id = 0;
    std::atomic<int> seen = 0;
    auto cancelled = engine.submit(
        long_one, [&](std::int32_t) { ++seen; }, &id);
    while (seen.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    engine.cancel(id);
    EXPECT_THROW(cancelled.get(), troupe::error);

    // The decoder's process is lost: what it held fails with the reason, new requests too.
    auto held = engine.submit(long_one);
    link.on_lost()("rank 1 (node1) died");
    EXPECT_THROW(held.get(), troupe::error);
    try {
      engine.submit(request_for(1)).get();
      FAIL() << "a request with no decode instance left";
    } catch (const troupe::error& e) {
      EXPECT_NE(std::string(e.what()).find("rank 1 (node1) died"), std::string::npos) << e.what();
    }
    link.disconnect();
  }
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(results[static_cast<std::size_t>(i)], alone[static_cast<std::size_t>(i)]) << i;
    EXPECT_EQ(streamed[static_cast<std::size_t>(i)], alone[static_cast<std::size_t>(i)]) << i;
  }
  decoder.reset();  // the decode side lets its sequences go
  EXPECT_TRUE(troupe::testing::eventually(
      10, [&] { return decode.cache.free_blocks() == decode.cache.total_blocks(); }));
}

}  // namespace
