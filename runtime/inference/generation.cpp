#include "runtime/inference/generation.hpp"

#include <algorithm>
#include <chrono>
#include <limits>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

using clock_type = std::chrono::steady_clock;

// Random streams of a sequence's draws (sampling_uniform): a token's draw, a draft's draw, the
// test that keeps or rejects a draft.
constexpr std::uint64_t token_stream = 0, draft_stream = 1, accept_stream = 2;

/// Gives the sequence's blocks back however generation ends.
struct sequence_guard {
  latent_cache& cache;
  latent_cache::sequence_id id;
  ~sequence_guard() { cache.release(id); }
};

class sequence_sampler {
 public:
  sequence_sampler(const generation_request& request, std::int64_t vocab)
      : params_(request.sampling),
        drawable_(request.drawable_vocab > 0 ? std::min(request.drawable_vocab, vocab) : vocab),
        row_(static_cast<std::size_t>(vocab)) {}

  /// The distribution a draw from logits row `row` of `logits` [rows, vocab] follows.
  void distribution(const tensor& logits, std::int64_t row, std::vector<float>& out) {
    const auto vocab = static_cast<std::int64_t>(row_.size());
    const float* in = logits.data_as<float>() + row * vocab;
    std::copy(in, in + vocab, row_.begin());
    // NOTES: a model's vocabulary may be padded past the tokenizer's (DeepSeek-V3: 129,280 rows
    // of which the tokenizer names fewer); ids it cannot decode are never drawn.
    std::fill(row_.begin() + drawable_, row_.end(), std::numeric_limits<float>::lowest());
    out.resize(row_.size());
    sampling_distribution(row_, params_, out);
  }

  std::int32_t draw(const std::vector<float>& p, std::uint64_t index, std::uint64_t stream) const {
    return draw_from(p, sampling_uniform(params_.seed, index, stream));
  }
  double uniform(std::uint64_t index, std::uint64_t stream) const {
    return sampling_uniform(params_.seed, index, stream);
  }

 private:
  sampling_params params_;
  std::int64_t drawable_;
  std::vector<float> row_;
};

/// The first `rows` rows of hidden states [1, n, hidden].
tensor first_rows(const tensor& hidden, std::int64_t rows) {
  const std::int64_t n = hidden.size(1), h = hidden.size(2);
  if (rows == n) return hidden;
  return hidden.reshape({n, h}).narrow(0, 0, rows).reshape({1, rows, h});
}

std::vector<std::int64_t> all_rows(std::int64_t count) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) rows[static_cast<std::size_t>(i)] = i;
  return rows;
}

}  // namespace

generation_result generate_sequence(cached_model& model, latent_cache& cache,
                                    const exec_context& context, const generation_request& request,
                                    const std::function<void(std::int32_t)>& on_token) {
  check_sampling(request.sampling);
  if (request.prompt.empty()) fail("generation needs a prompt of at least one token");
  if (request.max_new_tokens < 1) fail("max_new_tokens is {}; at least 1", request.max_new_tokens);
  const bool speculative = request.speculative_mtp;
  if (speculative && model.mtp_depth() < 1)
    fail(
        "speculative decoding with MTP needs an MTP module; this model has none "
        "(num_nextn_predict_layers = 0)");
  const std::int64_t vocab = model.config().vocab_size;
  sequence_sampler sampler(request, vocab);
  const sequence_guard sequence{cache, cache.add_sequence()};
  const std::vector<latent_cache::sequence_id> ids{sequence.id};
  generation_result result;
  result.stop = "length";
  const auto start = clock_type::now();
  // Records a token; true when generation ends with it.
  const auto emit = [&](std::int32_t token) {
    result.tokens.push_back(token);
    if (on_token) on_token(token);
    if (request.eos && token == *request.eos) {
      result.stop = "eos";
      return true;
    }
    return static_cast<std::int64_t>(result.tokens.size()) >= request.max_new_tokens;
  };
  // The MTP module over `rows` new positions of the main step's hidden states, their next
  // tokens `next`: the draft of the token after the last, and its distribution in q.
  std::vector<float> p, q;
  const auto draft_after = [&](const tensor& hidden, const std::vector<std::int32_t>& next,
                               std::uint64_t index) {
    const auto rows = static_cast<std::int64_t>(next.size());
    cache_step step(cache, ids, std::vector<std::int64_t>{rows});
    const tensor mtp_hidden = model.mtp_forward(context, 1, step, first_rows(hidden, rows), next);
    step.commit();  // the main step's rows and these: the sequence's length moves once
    sampler.distribution(model.logits(context, mtp_hidden, std::vector<std::int64_t>{rows - 1}, 1),
                         0, q);
    return sampler.draw(q, index, draft_stream);
  };

  // Prefill: the prompt in one forward gives the first token (and the first draft).
  const auto prompt_length = static_cast<std::int64_t>(request.prompt.size());
  std::int32_t token = 0;
  std::optional<std::int32_t> draft;
  {
    cache_step step(cache, ids, std::vector<std::int64_t>{prompt_length});
    const tensor hidden = model.forward(context, step, request.prompt);
    sampler.distribution(
        model.logits(context, hidden, std::vector<std::int64_t>{prompt_length - 1}), 0, p);
    token = sampler.draw(p, 0, token_stream);
    if (speculative) {
      std::vector<std::int32_t> next(request.prompt.begin() + 1, request.prompt.end());
      next.push_back(token);
      draft = draft_after(hidden, next, 1);
    } else {
      step.commit();
    }
  }
  result.prompt_seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  bool done = emit(token);

  // Decode: `token` is the last token chosen, not yet in the cache.
  while (!done) {
    const auto index = static_cast<std::uint64_t>(result.tokens.size());  // the next token's
    std::vector<std::int32_t> in{token};
    if (draft) in.push_back(*draft);
    cache_step step(cache, ids, std::vector<std::int64_t>{static_cast<std::int64_t>(in.size())});
    const tensor hidden = model.forward(context, step, in);
    const tensor logits =
        model.logits(context, hidden, all_rows(static_cast<std::int64_t>(in.size())));
    ++result.decode_forwards;
    sampler.distribution(logits, 0, p);
    if (!draft) {
      step.commit();
      token = sampler.draw(p, index, token_stream);
      done = emit(token);
      continue;
    }
    // Verify the draft against the main model's distribution.
    ++result.drafted;
    const auto [chosen, kept] = verify_draft(p, q, *draft, sampler.uniform(index, accept_stream),
                                             sampler.uniform(index, token_stream));
    if (kept) ++result.accepted;
    if ((done = emit(chosen))) break;
    std::vector<std::int32_t> next{chosen};
    token = chosen;
    if (kept) {  // the second row gives the token after the draft
      sampler.distribution(logits, 1, p);
      token = sampler.draw(p, index + 1, token_stream);
      next.push_back(token);
      if ((done = emit(token))) break;
    }
    draft = draft_after(hidden, next, index + next.size());
  }
  result.total_seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  return result;
}

}  // namespace troupe
