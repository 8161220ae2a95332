#pragma once

// Picking the next token from a model's logits: greedy, or a draw at a temperature from the
// top-k tokens and the top-p nucleus. A sequence's draws depend on its seed and how many tokens it
// has drawn, nothing else (counter-based: the same output however sequences are batched), and
// sampling_distribution gives the exact distribution a draw uses, which speculative sampling
// needs for its target and draft models.

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace troupe {

/// How one sequence picks its tokens.
struct sampling_params {
  float temperature = 0.0f;  ///< 0: greedy (the highest logit, the lowest id of equal ones)
  std::int32_t top_k = 0;    ///< keep the k most likely tokens; 0: all
  float top_p = 1.0f;        ///< keep the smallest set whose probability reaches p, in (0, 1]
  std::uint64_t seed = 0;
};

/// Throws troupe::error naming the field when temperature is negative or not finite, top_k is
/// negative, or top_p is outside (0, 1].
void check_sampling(const sampling_params& params);

/// out[i] = the probability that a draw under `params` picks token i (zeros for the tokens top-k
/// and top-p drop; one 1 for greedy). Throws troupe::error when a logit is NaN or infinite.
void sampling_distribution(std::span<const float> logits, const sampling_params& params,
                           std::span<float> out);

/// A token from `logits` under `params`; `draw` numbers this sequence's draws (0, 1, ...).
std::int32_t sample_token(std::span<const float> logits, const sampling_params& params,
                          std::uint64_t draw);

/// A token from a distribution (sums to 1) given a uniform `u` in [0, 1).
std::int32_t draw_from(std::span<const float> distribution, double u);

/// Speculative sampling's test of a draft drawn from the draft model's distribution q against
/// the target distribution p (Leviathan et al. 2023): the draft is kept when
/// u_keep < p(draft) / q(draft), else replaced by a draw (u_draw) from max(0, p - q) normalised;
/// the token returned follows p exactly. Returns the token and whether it is the draft.
std::pair<std::int32_t, bool> verify_draft(std::span<const float> p, std::span<const float> q,
                                           std::int32_t draft, double u_keep, double u_draw);

/// The uniform in [0, 1) of draw `draw` of a sequence seeded `seed` (stream `stream`: speculative
/// sampling's acceptance tests use another stream than its draws).
double sampling_uniform(std::uint64_t seed, std::uint64_t draw, std::uint64_t stream = 0);

}  // namespace troupe
