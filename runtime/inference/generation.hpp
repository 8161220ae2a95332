#pragma once

// Generating one sequence over the latent cache: the prompt in one forward (prefill), then a
// token per forward, or, with MTP speculative decoding, a token and the MTP module's draft of the
// one after it per forward.
//
// Speculative decoding (DeepSeek-V3 report, section 5.4.3; Leviathan et al. 2023): MTP module 1
// reads the main model's last hidden state and the token just chosen and drafts the next one
// from its distribution q. The next forward feeds [token, draft]; its first row's distribution p
// verifies the draft: kept with probability min(1, p(draft) / q(draft)), else replaced by a draw
// from max(0, p - q) normalised, so every token follows the main model's distribution exactly
// (greedy: the draft is kept iff it is the main model's argmax, so the text equals plain greedy
// decoding). A kept draft also yields the token after it from the second row: up to two tokens
// per forward. The MTP module's own cache layer is fed the same positions as the main model's.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/exec/exec_context.hpp"
#include "runtime/inference/cached_model.hpp"
#include "runtime/inference/latent_cache.hpp"
#include "runtime/inference/sampler.hpp"

namespace troupe {

struct generation_request {
  std::vector<std::int32_t> prompt;
  std::int64_t max_new_tokens = 64;
  sampling_params sampling;
  std::optional<std::int32_t> eos;  ///< generation stops after this token
  /// Ids at or above this are never drawn (a vocabulary padded past the tokenizer's); 0: none.
  std::int64_t drawable_vocab = 0;
  bool speculative_mtp = false;  ///< draft with MTP module 1 and verify
  /// Read the prompt, choose the first token, then hand the sequence off to another decoder
  /// (disaggregated prefill and decode: batch_decoder::take_handoff, add_handoff).
  bool prefill_only = false;
};

struct generation_result {
  std::vector<std::int32_t> tokens;  ///< generated, EOS included when it stopped there
  std::string stop;                  ///< "eos" or "length"
  double prompt_seconds = 0.0;       ///< the prefill, up to the first token
  double total_seconds = 0.0;
  std::int64_t decode_forwards = 0;  ///< main-model forwards after the prefill
  std::int64_t drafted = 0;          ///< drafts verified
  std::int64_t accepted = 0;         ///< drafts kept
  double acceptance() const {
    return drafted > 0 ? static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0;
  }
};

/// Generates for `request` in a new sequence of `cache` (released at the end, also on an
/// error): a batch_decoder (runtime/inference/batch_decoder.hpp) of one sequence. `on_token`
/// gets each token as it is produced. Throws troupe::error for an empty
/// prompt, ids outside the vocabulary, a full cache, or speculative decoding without an MTP
/// module.
generation_result generate_sequence(cached_model& model, latent_cache& cache,
                                    const exec_context& context, const generation_request& request,
                                    const std::function<void(std::int32_t)>& on_token = {});

}  // namespace troupe
