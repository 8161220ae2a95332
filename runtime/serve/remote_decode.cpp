#include "runtime/serve/remote_decode.hpp"

#include <map>
#include <mutex>

#include "runtime/core/error.hpp"

namespace troupe {

result_fields to_fields(const generation_result& r) {
  return {r.tokens,          r.stop,    r.prompt_seconds, r.total_seconds,
          r.decode_forwards, r.drafted, r.accepted};
}

generation_result from_fields(result_fields f) {
  generation_result r;
  r.tokens = std::move(f.tokens);
  r.stop = std::move(f.stop);
  r.prompt_seconds = f.prompt_seconds;
  r.total_seconds = f.total_seconds;
  r.decode_forwards = f.decode_forwards;
  r.drafted = f.drafted;
  r.accepted = f.accepted;
  return r;
}

handoff_fields to_fields(const sequence_handoff& h) {
  handoff_fields f;
  const generation_request& r = h.request;
  f.prompt = r.prompt;
  f.max_new_tokens = r.max_new_tokens;
  f.temperature = r.sampling.temperature;
  f.top_p = r.sampling.top_p;
  f.top_k = r.sampling.top_k;
  f.seed = r.sampling.seed;
  f.has_eos = r.eos.has_value();
  f.eos = r.eos.value_or(0);
  f.drawable_vocab = r.drawable_vocab;
  f.speculative_mtp = r.speculative_mtp;
  f.result = to_fields(h.result);
  f.token = h.token;
  f.has_draft = h.draft.has_value();
  f.draft = h.draft.value_or(0);
  f.draft_distribution = h.draft_distribution;
  const latent_cache_shape& s = h.rows.shape;
  f.layers = s.layers;
  f.kv_lora_rank = s.kv_lora_rank;
  f.rope_dim = s.rope_dim;
  f.block_tokens = s.block_tokens;
  f.cache_type = static_cast<std::uint8_t>(s.type);
  f.length = h.rows.length;
  // NOTES: the transport sends host memory: a GPU cache's rows cross through the host (the
  // decode process copies them into its own cache, wherever that is).
  f.blocks = h.rows.blocks.where().is_cuda() ? h.rows.blocks.to(device::cpu()) : h.rows.blocks;
  return f;
}

sequence_handoff from_fields(handoff_fields f) {
  if (f.cache_type > static_cast<std::uint8_t>(dtype::u8))
    fail("a hand-off of cache type {}, which troupe does not know", f.cache_type);
  sequence_handoff h;
  generation_request& r = h.request;
  r.prompt = std::move(f.prompt);
  r.max_new_tokens = f.max_new_tokens;
  r.sampling = {f.temperature, f.top_k, f.top_p, f.seed};
  if (f.has_eos) r.eos = f.eos;
  r.drawable_vocab = f.drawable_vocab;
  r.speculative_mtp = f.speculative_mtp;
  h.result = from_fields(std::move(f.result));
  h.token = f.token;
  if (f.has_draft) h.draft = f.draft;
  h.draft_distribution = std::move(f.draft_distribution);
  h.rows.shape = {f.layers, f.kv_lora_rank, f.rope_dim, static_cast<dtype>(f.cache_type),
                  f.block_tokens};
  h.rows.length = f.length;
  h.rows.blocks = std::move(f.blocks);
  return h;
}

namespace {

/// One adopted sequence: its result once its engine is done with it (the end is sent once,
/// by whichever of the engine's callback and the adopting handler comes second).
struct adopted {
  std::mutex mutex;
  std::future<generation_result> future;
  bool done = false, sent = false;
};

decode_event end_of(std::uint64_t id, std::future<generation_result>& future) {
  decode_event e;
  e.id = id;
  try {
    e.result = to_fields(future.get());
    e.finished = true;
  } catch (const std::exception& error) {
    e.error = error.what();
  }
  return e;
}

/// Sends the end of `state` to `to` if it is done and nobody sent it yet (state locked).
void send_end_once(actor_runtime& runtime, const actor_ref& to, std::uint64_t id, adopted& state) {
  if (!state.done || !state.future.valid() || state.sent) return;
  state.sent = true;
  runtime.tell(to, end_of(id, state.future));
}

struct decode_actor_state {
  std::weak_ptr<disaggregated_engine> engine;  // its owner lets it go when the job ends
  std::mutex mutex;
  std::map<std::uint64_t, request_engine::ticket> tickets;  // sender's id -> the engine's
};

}  // namespace

actor_ref spawn_decode_actor(actor_runtime& runtime, std::weak_ptr<disaggregated_engine> engine,
                             std::shared_ptr<serving_swap> swap,
                             std::shared_ptr<serving_rebalance> rebalance) {
  auto state = std::make_shared<decode_actor_state>();
  state->engine = std::move(engine);
  return runtime.spawn(
      "decode",
      [state, swap, rebalance, &runtime](event_actor&) {
        return behavior()
            .on<decode_rebalance>([state, rebalance](decode_rebalance& m) -> std::string {
              if (!rebalance || !rebalance->has_shards())
                fail("this decode process has no expert shards");
              const auto alive = state->engine.lock();  // the re-placement holds its steps
              if (!alive) fail("the decode process is stopping");
              const rebalance_outcome done = rebalance->run(m.given ? &m.load : nullptr);
              return nlohmann::json{{"instances", done.instances},
                                    {"moved", done.moved},
                                    {"bytes", done.bytes},
                                    {"pause_seconds", done.pause_seconds}}
                  .dump();
            })
            // NOTES: a swap's halves block this actor while they load the library and hold the
            // steps (milliseconds; a probe of the library up to its deadline): hand-offs wait.
            .on<decode_swap_prepare>([state, swap](decode_swap_prepare& m) -> std::int64_t {
              if (!swap) fail("this decode process takes no plugin swaps");
              const auto alive = state->engine.lock();  // the swap holds its steps
              if (!alive) fail("the decode process is stopping");
              const auto role = parse_plugin_kind(m.role);
              if (!role) fail("no plugin role '{}'", m.role);
              return swap->prepare(*role, m.library);
            })
            .on<decode_swap_finish>([state, swap](decode_swap_finish& m) {
              if (!swap) fail("this decode process takes no plugin swaps");
              const auto alive = state->engine.lock();
              if (!alive) fail("the decode process is stopping");
              if (m.commit)
                swap->commit();
              else
                swap->abort();
              return true;
            })
            .on<decode_handoff>([state, &runtime](decode_handoff& m) {
              const std::uint64_t id = m.id;
              const actor_ref to = m.reply_to;
              auto sequence = std::make_shared<adopted>();
              // Both callbacks run on the decode instance's thread, tokens before the end.
              auto on_token = [&runtime, to, id](std::int32_t token) {
                decode_event e;
                e.id = id;
                e.tokens.push_back(token);
                runtime.tell(to, std::move(e));
              };
              // NOTES: weak: the engine holds this callback, and the state holds the engine.
              auto on_done = [&runtime, to, id, sequence, weak = std::weak_ptr(state)] {
                if (auto alive = weak.lock()) {
                  std::lock_guard lock(alive->mutex);
                  alive->tickets.erase(id);
                }
                std::lock_guard lock(sequence->mutex);
                sequence->done = true;
                send_end_once(runtime, to, id, *sequence);
              };
              request_engine::ticket ticket = 0;
              std::future<generation_result> future;
              try {
                const auto alive = state->engine.lock();
                if (!alive) fail("the decode process is stopping");
                // Locked across adopt: the end (on_done erases the ticket) comes after the insert.
                std::lock_guard lock(state->mutex);
                future =
                    alive->adopt(from_fields(std::move(m.handoff)), on_token, &ticket, on_done);
                state->tickets[id] = ticket;
              } catch (const std::exception& e) {
                decode_event failed;
                failed.id = id;
                failed.error = e.what();
                runtime.tell(to, std::move(failed));
                return;
              }
              std::lock_guard lock(sequence->mutex);
              sequence->future = std::move(future);
              send_end_once(runtime, to, id, *sequence);
            })
            .on<decode_cancel>([state](decode_cancel& m) {
              request_engine::ticket ticket = 0;
              {
                std::lock_guard lock(state->mutex);
                const auto it = state->tickets.find(m.id);
                if (it == state->tickets.end()) return;  // it ended already
                ticket = it->second;
              }
              if (const auto alive = state->engine.lock()) alive->cancel(ticket);
            });
      },
      actor_thread::own);  // swaps and re-placements wait for held steps and remote shards
}

/// The engine the front actor gives events to, while it exists.
struct actor_remote_decoder::link {
  std::mutex mutex;
  disaggregated_engine* engine = nullptr;
  std::size_t index = 0;
};

actor_remote_decoder::actor_remote_decoder(actor_runtime& runtime, actor_ref decode)
    : runtime_(runtime), decode_(std::move(decode)), link_(std::make_shared<link>()) {}

actor_remote_decoder::~actor_remote_decoder() {
  disconnect();
  runtime_.stop(front_);
}

void actor_remote_decoder::connect(disaggregated_engine& engine, std::size_t index) {
  {
    std::lock_guard lock(link_->mutex);
    link_->engine = &engine;
    link_->index = index;
  }
  front_ = runtime_.spawn("serve_front", [to = link_](event_actor&) {
    return behavior().on<decode_event>([to](decode_event& m) {
      remote_event e;
      e.id = m.id;
      e.tokens = std::move(m.tokens);
      e.finished = m.finished;
      e.error = std::move(m.error);
      e.result = from_fields(std::move(m.result));
      std::lock_guard lock(to->mutex);
      if (to->engine != nullptr) to->engine->on_remote_event(to->index, std::move(e));
    });
  });
}

std::function<void(const std::string&)> actor_remote_decoder::on_lost() const {
  return [to = link_](const std::string& why) {
    std::lock_guard lock(to->mutex);
    if (to->engine != nullptr) to->engine->remote_lost(to->index, why);
  };
}

void actor_remote_decoder::disconnect() {
  std::lock_guard lock(link_->mutex);
  link_->engine = nullptr;
}

void actor_remote_decoder::send(std::uint64_t id, const sequence_handoff& handoff) {
  if (!front_) fail("remote decoder: send before connect");
  runtime_.tell(decode_, decode_handoff{id, front_, to_fields(handoff)});
}

void actor_remote_decoder::cancel(std::uint64_t id) {
  runtime_.tell(decode_, decode_cancel{id});
}

}  // namespace troupe
