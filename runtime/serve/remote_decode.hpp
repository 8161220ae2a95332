#pragma once

// Prefill and decode in two processes (DeepSeek-V3's deployment units on separate machines): the
// serving process's disaggregated_engine reaches the decode process through a remote_decoder
// whose hand-offs travel as actor messages (the cached rows as a tensor: UCX between processes,
// a pointer within one), and the decode process's engine (decode instances only) adopts them and
// reports each sequence's tokens and end back.
//
// Messages:
//   serving process -> decode actor:  decode_handoff (a prefilled sequence), decode_cancel,
//                                     decode_swap_prepare -> int64 and decode_swap_finish -> bool
//                                     (a plugin swap of the decode process's instances);
//                                     decode_rebalance -> string (an expert re-placement)
//   decode actor -> the sender's front actor:  decode_event (tokens; the end: result or error)
// Both actors are thin: they turn messages into calls of the engines (disaggregated_engine.hpp).

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/message.hpp"
#include "runtime/serve/disaggregated_engine.hpp"
#include "runtime/serve/serving_rebalance.hpp"
#include "runtime/serve/serving_swap.hpp"

namespace troupe {

/// A generation_result as it travels.
struct result_fields {
  std::vector<std::int32_t> tokens;
  std::string stop;
  double prompt_seconds = 0.0, total_seconds = 0.0;
  std::int64_t decode_forwards = 0, drafted = 0, accepted = 0;
  auto fields() {
    return std::tie(tokens, stop, prompt_seconds, total_seconds, decode_forwards, drafted,
                    accepted);
  }
};

result_fields to_fields(const generation_result& result);
generation_result from_fields(result_fields fields);

/// A sequence_handoff as it travels (every field the decode process needs, none optional).
struct handoff_fields {
  std::vector<std::int32_t> prompt;
  std::int64_t max_new_tokens = 0;
  float temperature = 0.0f, top_p = 1.0f;
  std::int32_t top_k = 0;
  std::uint64_t seed = 0;
  bool has_eos = false;
  std::int32_t eos = 0;
  std::int64_t drawable_vocab = 0;
  bool speculative_mtp = false;
  result_fields result;  ///< so far: the first token
  std::int32_t token = 0;
  bool has_draft = false;
  std::int32_t draft = 0;
  std::vector<float> draft_distribution;
  std::int64_t layers = 0, kv_lora_rank = 0, rope_dim = 0, block_tokens = 0, length = 0;
  std::uint8_t cache_type = 0;
  tensor blocks;
  auto fields() {
    return std::tie(prompt, max_new_tokens, temperature, top_p, top_k, seed, has_eos, eos,
                    drawable_vocab, speculative_mtp, result, token, has_draft, draft,
                    draft_distribution, layers, kv_lora_rank, rope_dim, block_tokens, length,
                    cache_type, blocks);
  }
};

handoff_fields to_fields(const sequence_handoff& handoff);
/// Throws troupe::error for a cache type troupe does not know.
sequence_handoff from_fields(handoff_fields fields);

/// Serving process -> decode actor: decode this sequence; report to `reply_to` under `id`.
struct decode_handoff {
  TROUPE_MESSAGE("decode_handoff");
  std::uint64_t id = 0;
  actor_ref reply_to;
  handoff_fields handoff;
  auto fields() { return std::tie(id, reply_to, handoff); }
};

/// Serving process -> decode actor: the client of sequence `id` went away.
struct decode_cancel {
  TROUPE_MESSAGE("decode_cancel");
  std::uint64_t id = 0;
  auto fields() { return std::tie(id); }
};

/// Decode actor -> the serving process's front actor: one sequence's new tokens, or its end.
struct decode_event {
  TROUPE_MESSAGE("decode_event");
  std::uint64_t id = 0;
  std::vector<std::int32_t> tokens;
  bool finished = false;
  std::string error;
  result_fields result;  ///< with finished
  auto fields() { return std::tie(id, tokens, finished, error, result); }
};

/// Serving process -> decode actor: prepare a plugin swap of the decode process's instances
/// (serving_swap.hpp: the library is a path on the decode host); the reply is the number of
/// plugin instances it will replace, or the error that refuses it.
struct decode_swap_prepare {
  TROUPE_REQUEST("decode_swap_prepare", std::int64_t);
  std::string role, library;
  auto fields() { return std::tie(role, library); }
};

/// Serving process -> decode actor: put the prepared swap in place (`commit`) or drop it.
struct decode_swap_finish {
  TROUPE_REQUEST("decode_swap_finish", bool);
  bool commit = false;
  auto fields() { return std::tie(commit); }
};

/// Serving process -> decode actor: re-place the decode process's expert shards for `load` (when
/// `given`) or for the load each instance observed. The reply: what they did, as JSON text
/// ({"instances", "moved", "bytes", "pause_seconds"}: serving_rebalance.hpp's outcome).
struct decode_rebalance {
  TROUPE_REQUEST("decode_rebalance", std::string);
  bool given = false;
  std::map<std::int64_t, std::vector<std::int64_t>> load;
  auto fields() { return std::tie(given, load); }
};

/// The decode process's actor: adopts each hand-off into `engine` (decode instances only) and
/// reports to the hand-off's sender. One sending process (the serving process) at a time. Once
/// the engine's owner lets it go, hand-offs fail ("the decode process is stopping"). With `swap`
/// (the decode process's instances) it takes part in the server's plugin swaps, with `rebalance`
/// in its expert re-placements.
actor_ref spawn_decode_actor(actor_runtime& runtime, std::weak_ptr<disaggregated_engine> engine,
                             std::shared_ptr<serving_swap> swap = nullptr,
                             std::shared_ptr<serving_rebalance> rebalance = nullptr);

/// The serving process's side: a remote_decoder that sends to `decode` (the decode actor, here
/// or a proxy for another process's), and the front actor that gives its events to `engine`.
class actor_remote_decoder : public remote_decoder {
 public:
  actor_remote_decoder(actor_runtime& runtime, actor_ref decode);
  ~actor_remote_decoder() override;
  /// Spawns the front actor for remote decoder `index` of `engine`; before the first send.
  void connect(disaggregated_engine& engine, std::size_t index);
  /// The front actor (for another process to reach, expose it under a name).
  const actor_ref& front() const { return front_; }
  /// What the cluster's failure handler calls when the decode process is gone: its sequences
  /// fail with the reason. It may outlive this object (it does nothing then).
  std::function<void(const std::string& why)> on_lost() const;
  /// Before the engine goes: events that still come are dropped.
  void disconnect();

  void send(std::uint64_t id, const sequence_handoff& handoff) override;
  void cancel(std::uint64_t id) override;

 private:
  struct link;
  actor_runtime& runtime_;
  actor_ref decode_, front_;
  std::shared_ptr<link> link_;
};

}  // namespace troupe
