#pragma once

// Prefill and decode on separate instances (DeepSeek-V3's deployment: prefill units and decode
// units), in one process. Each instance is a model, a latent cache and an execution context of
// its own, stepped by a thread of its own. A request waits in one bounded queue; a prefill
// instance with room takes it, reads its prompt (in chunks, batched with others) and chooses its
// first token; the sequence then moves with its cached rows (batch_decoder's hand-off: the rows
// are copied from the prefill cache into the decode cache) to the decode instance the scheduler
// picks by load: the fewest sequences decoding or arriving, then the most free blocks. A decode
// instance whose cache cannot take a hand-off yet keeps it until sequences finish.
//
// A sequence's tokens are the ones it gets from serving_engine (the same sampling draws).
//
// Across processes (remote_decode.hpp): a decode instance may be a remote_decoder, another
// process's engine that decodes only (no prefill instances) and adopts the sequences this one
// sends it, reporting each one's tokens and end back (on_remote_event). The scheduler counts it
// like a local instance; if its process is lost, its sequences fail with the reason and it gets
// no more.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "runtime/inference/batch_decoder.hpp"
#include "runtime/serve/pending_request.hpp"
#include "runtime/serve/request_engine.hpp"
#include "runtime/serve/serving_metrics.hpp"
#include "runtime/serve/step_hold.hpp"

namespace troupe {

/// One instance's model, cache and execution context (each used by its instance's thread only).
struct serving_instance {
  cached_model* model = nullptr;
  latent_cache* cache = nullptr;
  const exec_context* context = nullptr;
  /// Called on the instance's thread between two steps with the step's expert load (layer ->
  /// tokens per expert): where its expert shards re-place their experts. It must not throw; may be
  /// empty.
  std::function<void(const std::map<std::int64_t, std::vector<std::int64_t>>&)> after_step;
};

/// A decode instance in another process, as the engine reaches it: hand-offs and cancellations go
/// out (from the engine's threads); its events come back through on_remote_event.
class remote_decoder {
 public:
  virtual ~remote_decoder() = default;
  virtual void send(std::uint64_t id, const sequence_handoff& handoff) = 0;
  virtual void cancel(std::uint64_t id) = 0;
};

/// What a remote decode instance reports for one sequence it was sent.
struct remote_event {
  std::uint64_t id = 0;  ///< the sender's ticket
  std::vector<std::int32_t> tokens;
  bool finished = false;  ///< `result` is its result
  std::string error;      ///< non-empty: it failed
  generation_result result;
  std::int64_t free_blocks = -1;  ///< the instance's cache after the step (-1: unknown)
};

struct disaggregated_options {
  std::int64_t prefill_batch = 8;  ///< sequences a prefill instance reads at once
  std::int64_t decode_batch = 32;  ///< sequences a decode instance decodes at once
  std::int64_t max_queue = 256;    ///< requests waiting for a prefill instance
  std::int64_t prefill_chunk = 0;  ///< prompt tokens a sequence reads per step (0: whole)
  metrics_registry* metrics = nullptr;
  serving_metrics* serve_metrics = nullptr;
};

class disaggregated_engine final : public request_engine {
 public:
  /// Starts a thread per instance (local or `remote`). Throws troupe::error without a decode
  /// instance, for caches of different shapes, or for batch sizes below 1. Without prefill
  /// instances the engine only decodes what adopt() gives it (the decode process).
  disaggregated_engine(std::vector<serving_instance> prefill, std::vector<serving_instance> decode,
                       disaggregated_options options = {},
                       std::vector<remote_decoder*> remote = {});
  /// Stops the threads; requests not finished fail with troupe::error.
  ~disaggregated_engine() override;
  disaggregated_engine(const disaggregated_engine&) = delete;
  disaggregated_engine& operator=(const disaggregated_engine&) = delete;

  std::future<generation_result> submit(const generation_request& request,
                                        token_callback on_token = {}, ticket* id = nullptr,
                                        done_callback on_done = {}) override;
  void cancel(ticket id) override;
  std::int64_t queued() const override;
  std::int64_t decoding() const override;
  /// Holds the local prefill and decode instances' threads (not the remote decoders').
  double hold_steps(const std::function<void()>& work) override;

  /// Sequences each decode instance took, in instance order (local, then remote).
  std::vector<std::int64_t> decoded_per_instance() const;

  /// Takes a sequence another process read the prompt of, for the local decode instance the
  /// scheduler picks; its tokens go to `on_token` and its end to the future and `on_done`.
  std::future<generation_result> adopt(sequence_handoff handoff, token_callback on_token = {},
                                       ticket* id = nullptr, done_callback on_done = {});
  /// Remote decoder `r` (its index in `remote`) reports on a sequence it was sent. Events of one
  /// sequence come in order; call from one thread.
  void on_remote_event(std::size_t r, remote_event event);
  /// Remote decoder `r`'s process is gone: its sequences fail with `why`, it gets no more.
  void remote_lost(std::size_t r, const std::string& why);

 private:
  /// A prefilled sequence on its way to a decode instance.
  struct arrival {
    pending_request request;
    sequence_handoff handoff;
  };
  struct decode_state {
    std::deque<arrival> inbox;
    std::int64_t active = 0, taken = 0, free_blocks = 0;
    remote_decoder* remote = nullptr;        ///< null: a local instance
    std::map<ticket, pending_request> sent;  ///< remote: sequences it decodes
    std::string lost;                        ///< remote: why its process is gone
  };

  void prefill_loop(std::size_t instance);
  void decode_loop(std::size_t instance);
  /// A remote instance's thread: sends it what arrives and the cancellations of what it has.
  void remote_loop(std::size_t instance);
  /// The decode instance with the fewest sequences decoding or arriving, then the most free
  /// blocks; called with mutex_ held.
  std::size_t pick_decode() const;
  /// Whether `id` was cancelled (forgetting it); called with mutex_ held.
  bool take_cancel(ticket id);
  /// The metrics' view after a step; an instance's blocks as its thread counted them (a slot past
  /// `used`: none, a remote instance's change).
  void report_state(std::vector<std::int64_t>& used, std::size_t slot, std::int64_t blocks_used);

  std::vector<serving_instance> prefill_, decode_;
  disaggregated_options options_;
  mutable std::mutex mutex_;
  std::mutex remote_delivery_;  ///< on_remote_event and remote_lost, one at a time
  std::condition_variable wake_;
  request_queue queue_;
  std::vector<decode_state> decode_state_;
  std::set<ticket> cancelled_;  ///< not found in the queue: each instance looks for its own
  std::vector<std::int64_t> prefilling_;   ///< per prefill instance
  std::vector<std::int64_t> blocks_used_;  ///< per instance: prefill ones, then decode ones
  std::int64_t blocks_total_ = 0;
  bool stopping_ = false;
  step_hold hold_;  ///< over the local instances' threads
  std::vector<std::thread> threads_;
};

}  // namespace troupe
