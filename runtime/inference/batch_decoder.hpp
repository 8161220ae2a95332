#pragma once

// Continuous batching over the latent cache: sequences join and leave between steps, and each
// step is one forward of the model over every active sequence's new tokens: a prompt (or the
// next chunk of it, so a long prompt does not stall the others), else the last token chosen
// and, for a sequence decoding speculatively, the MTP module's draft of the one after it
// (runtime/inference/generation.hpp describes the verification). Each sequence has its own
// sampling parameters, seed, stop conditions and statistics; cancel() ends one at once and gives
// its cache blocks back. A sequence's tokens do not depend on what it is batched with.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/exec/exec_context.hpp"
#include "runtime/inference/cached_model.hpp"
#include "runtime/inference/generation.hpp"
#include "runtime/inference/latent_cache.hpp"
#include "runtime/metrics/metrics.hpp"

namespace troupe {

struct batch_options {
  /// Prompt tokens a sequence feeds per step (0: its whole prompt in one step).
  std::int64_t prefill_chunk = 0;
  /// Where the tokens generated and the drafts verified and kept are counted (may be null).
  metrics_registry* metrics = nullptr;
};

/// A sequence whose prompt one decoder read, on its way to another that decodes it: the request,
/// the state after its first token, and its cached rows (on the prefill cache's device).
struct sequence_handoff {
  generation_request request;
  generation_result result;               ///< so far: the first token, prompt_seconds
  std::int32_t token = 0;                 ///< the last token chosen, not in the cache yet
  std::optional<std::int32_t> draft;      ///< the MTP module's draft of the token after it
  std::vector<float> draft_distribution;  ///< the draft's distribution, to verify it by
  latent_rows rows;
};

class batch_decoder {
 public:
  using sequence_id = std::uint64_t;

  /// What one step produced for one sequence.
  struct event {
    sequence_id id = 0;
    std::vector<std::int32_t> tokens;  ///< new tokens, in order (none while the prompt is read)
    bool finished = false;             ///< its result is ready (take_result)
    bool handed_off = false;           ///< a prefill_only sequence read its prompt: take_handoff
  };

  batch_decoder(cached_model& model, latent_cache& cache, const exec_context& context,
                batch_options options = {});
  ~batch_decoder();
  batch_decoder(const batch_decoder&) = delete;
  batch_decoder& operator=(const batch_decoder&) = delete;

  /// Adds a sequence; it starts reading its prompt at the next step. Throws troupe::error for an
  /// empty prompt, ids outside the vocabulary, bad sampling parameters, max_new_tokens below 1,
  /// or speculative decoding on a model without an MTP module; nothing is added then.
  sequence_id add(const generation_request& request);
  /// Ends a sequence now (a client that went away): its blocks go back to the pool and nothing
  /// more is reported for it. Unknown or finished ids are ignored.
  void cancel(sequence_id id);

  /// One forward over every active sequence. Throws troupe::error when the cache cannot hold
  /// the step (nothing is changed then: the caller may cancel sequences and step again).
  std::vector<event> step();

  /// Adds a sequence another decoder read the prompt of (its rows go into this decoder's cache,
  /// of the same shape); it decodes from the next step on. Throws troupe::error when the cache
  /// cannot hold it or the model cannot draft for it; nothing is added then.
  sequence_id add_handoff(sequence_handoff handoff);
  /// The hand-off of a prefill_only sequence whose step said handed_off (once; throws
  /// troupe::error for another id). Its blocks in this decoder's cache are free already.
  sequence_handoff take_handoff(sequence_id id);

  /// Sequences still generating.
  std::int64_t active() const { return static_cast<std::int64_t>(order_.size()); }
  /// The result of a finished sequence (once; throws troupe::error for another id).
  generation_result take_result(sequence_id id);

 private:
  struct sequence;
  struct mtp_rows;
  /// The new tokens the sequence feeds this step.
  std::vector<std::int32_t> step_tokens(const sequence& s) const;
  /// The MTP module over the rows the speculative sequences gave; each gets its next draft.
  void draft(const tensor& hidden, const std::vector<mtp_rows>& rows);
  /// Records a token; true when the sequence ends with it.
  static bool emit(sequence& s, std::int32_t token, event& e);

  cached_model* model_;
  latent_cache* cache_;
  const exec_context* context_;
  batch_options options_;
  std::map<sequence_id, std::unique_ptr<sequence>> sequences_;
  std::deque<sequence_id> order_;  // active sequences, in the order they came
  std::map<sequence_id, generation_result> finished_;
  std::map<sequence_id, sequence_handoff> handoffs_;
  sequence_id next_ = 1;
};

}  // namespace troupe
