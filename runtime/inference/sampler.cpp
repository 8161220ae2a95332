#include "runtime/inference/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/counter_random.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

void check_sampling(const sampling_params& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f)
    fail("temperature {} must be finite and at least 0 (0: greedy)", p.temperature);
  if (p.top_k < 0) fail("top_k {} must be at least 0 (0: every token)", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("top_p {} must be in (0, 1]", p.top_p);
}

namespace {

void check_logits(std::span<const float> logits) {
  if (logits.empty()) fail("sampling: no logits (an empty vocabulary)");
  for (std::size_t i = 0; i < logits.size(); ++i)
    if (!std::isfinite(logits[i]))
      fail("sampling: the logit of token {} is {}: the model's output is not finite", i, logits[i]);
}

std::int32_t argmax(std::span<const float> logits) {
  // std::max_element returns the first of equal maxima: the lowest id.
  return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

}  // namespace

void sampling_distribution(std::span<const float> logits, const sampling_params& params,
                           std::span<float> out) {
  check_sampling(params);
  check_logits(logits);
  if (out.size() != logits.size())
    fail("sampling: {} probabilities for {} logits", out.size(), logits.size());
  std::fill(out.begin(), out.end(), 0.0f);
  if (params.temperature == 0.0f) {
    out[static_cast<std::size_t>(argmax(logits))] = 1.0f;
    return;
  }
  // Tokens by logit, highest first (the lower id first among equals): top-k keeps a prefix.
  std::vector<std::int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  const std::size_t keep_k = params.top_k > 0
                                 ? std::min(order.size(), static_cast<std::size_t>(params.top_k))
                                 : order.size();
  const auto higher = [&](std::int32_t a, std::int32_t b) {
    const float la = logits[static_cast<std::size_t>(a)], lb = logits[static_cast<std::size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep_k), order.end(),
                    higher);
  order.resize(keep_k);
  // Softmax at the temperature over the kept tokens, in double.
  const double top = logits[static_cast<std::size_t>(order.front())];
  std::vector<double> weight(order.size());
  double total = 0.0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    weight[i] = std::exp((static_cast<double>(logits[static_cast<std::size_t>(order[i])]) - top) /
                         static_cast<double>(params.temperature));
    total += weight[i];
  }
  // Top-p: the shortest prefix whose mass reaches p (at least one token).
  std::size_t kept = order.size();
  if (params.top_p < 1.0f) {
    double mass = 0.0;
    for (std::size_t i = 0; i < order.size(); ++i) {
      mass += weight[i] / total;
      if (mass >= static_cast<double>(params.top_p)) {
        kept = i + 1;
        break;
      }
    }
  }
  double kept_total = 0.0;
  for (std::size_t i = 0; i < kept; ++i) kept_total += weight[i];
  for (std::size_t i = 0; i < kept; ++i)
    out[static_cast<std::size_t>(order[i])] = static_cast<float>(weight[i] / kept_total);
}

double sampling_uniform(std::uint64_t seed, std::uint64_t draw, std::uint64_t stream) {
  const counter_random random(seed ^ (stream * 0xd1b54a32d192ed03ULL));
  return static_cast<double>(random.bits(draw) >> 11) * 0x1p-53;
}

std::int32_t draw_from(std::span<const float> distribution, double u) {
  double cumulative = 0.0;
  std::int32_t last = -1;
  for (std::size_t i = 0; i < distribution.size(); ++i) {
    if (distribution[i] <= 0.0f) continue;
    cumulative += static_cast<double>(distribution[i]);
    last = static_cast<std::int32_t>(i);
    if (u < cumulative) return last;
  }
  if (last < 0) fail("sampling: the distribution has no token with a positive probability");
  return last;  // u beyond the rounded total: the last token with mass
}

std::int32_t sample_token(std::span<const float> logits, const sampling_params& params,
                          std::uint64_t draw) {
  if (params.temperature == 0.0f) {
    check_sampling(params);
    check_logits(logits);
    return argmax(logits);
  }
  std::vector<float> distribution(logits.size());
  sampling_distribution(logits, params, distribution);
  return draw_from(distribution, sampling_uniform(params.seed, draw));
}

std::pair<std::int32_t, bool> verify_draft(std::span<const float> p, std::span<const float> q,
                                           std::int32_t draft, double u_keep, double u_draw) {
  if (p.size() != q.size() || draft < 0 || static_cast<std::size_t>(draft) >= p.size())
    fail("verify_draft: distributions of {} and {} tokens, draft {}", p.size(), q.size(), draft);
  const auto d = static_cast<std::size_t>(draft);
  if (u_keep * static_cast<double>(q[d]) < static_cast<double>(p[d])) return {draft, true};
  // The residual max(0, p - q), normalised; where p <= q everywhere (p = q) it is p itself.
  std::vector<float> residual(p.size());
  double total = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    residual[i] = std::max(0.0f, p[i] - q[i]);
    total += static_cast<double>(residual[i]);
  }
  if (total <= 0.0) return {draw_from(p, u_draw), false};
  for (float& r : residual) r = static_cast<float>(static_cast<double>(r) / total);
  return {draw_from(residual, u_draw), false};
}

}  // namespace troupe
