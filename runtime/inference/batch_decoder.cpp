#include "runtime/inference/batch_decoder.hpp"

#include <algorithm>
#include <chrono>
#include <limits>

#include "kernels/dispatch/device_ops.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

namespace {

using clock_type = std::chrono::steady_clock;

// Random streams of a sequence's draws (sampling_uniform): a token's draw, a draft's draw, the
// test that keeps or rejects a draft.
constexpr std::uint64_t token_stream = 0, draft_stream = 1, accept_stream = 2;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

}  // namespace

namespace detail {

/// One sequence's draws: its sampling parameters over logits rows, with the ids it may not
/// draw masked.
class sequence_sampler {
 public:
  sequence_sampler(const generation_request& request, std::int64_t vocab)
      : params_(request.sampling),
        drawable_(request.drawable_vocab > 0 ? std::min(request.drawable_vocab, vocab) : vocab),
        row_(static_cast<std::size_t>(vocab)) {}

  /// The distribution a draw from row `row` of logits [rows, vocab] follows.
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
    return draw_from(p, uniform(index, stream));
  }
  double uniform(std::uint64_t index, std::uint64_t stream) const {
    return sampling_uniform(params_.seed, index, stream);
  }

 private:
  sampling_params params_;
  std::int64_t drawable_;
  std::vector<float> row_;
};

}  // namespace detail

struct batch_decoder::sequence {
  sequence(const generation_request& r, std::int64_t vocab, latent_cache::sequence_id cache)
      : request(r), sampler(r, vocab), cache_id(cache), start(clock_type::now()) {}
  generation_request request;
  detail::sequence_sampler sampler;
  latent_cache::sequence_id cache_id;
  clock_type::time_point start;
  std::int64_t prompt_done = 0;  // prompt tokens in the cache
  std::int32_t token = 0;        // the last token chosen, not in the cache yet
  std::optional<std::int32_t> draft;
  std::vector<float> p, q;  // the main model's distribution, the draft's
  generation_result result;
  bool done = false;

  std::int64_t prompt_length() const { return static_cast<std::int64_t>(request.prompt.size()); }
  bool reading_prompt() const { return prompt_done < prompt_length(); }
};

/// What a speculative sequence's MTP module reads after the main forward: the main model's
/// hidden states of `count` rows from `row` (positions from `start`) and the token after each.
struct batch_decoder::mtp_rows {
  sequence* owner = nullptr;
  std::int64_t row = 0, start = 0, count = 0;
  std::vector<std::int32_t> next;
};

batch_decoder::batch_decoder(cached_model& model, latent_cache& cache, const exec_context& context,
                             batch_options options)
    : model_(&model), cache_(&cache), context_(&context), options_(options) {
  if (options.prefill_chunk < 0)
    fail("prefill_chunk is {}; 0 (whole prompts) or more", options.prefill_chunk);
}

batch_decoder::~batch_decoder() {
  for (const auto& [id, s] : sequences_) cache_->release(s->cache_id);
}

batch_decoder::sequence_id batch_decoder::add(const generation_request& request) {
  check_sampling(request.sampling);
  if (request.prompt.empty()) fail("generation needs a prompt of at least one token");
  if (request.max_new_tokens < 1) fail("max_new_tokens is {}; at least 1", request.max_new_tokens);
  const std::int64_t vocab = model_->config().vocab_size;
  for (std::size_t i = 0; i < request.prompt.size(); ++i)
    if (request.prompt[i] < 0 || request.prompt[i] >= vocab)
      fail("prompt token {} (at {}) is outside the model's vocabulary of {}", request.prompt[i], i,
           vocab);
  if (request.speculative_mtp && model_->mtp_depth() < 1)
    fail(
        "speculative decoding with MTP needs an MTP module; this model has none "
        "(num_nextn_predict_layers = 0)");
  const sequence_id id = next_++;
  sequences_.emplace(id, std::make_unique<sequence>(request, vocab, cache_->add_sequence()));
  order_.push_back(id);
  return id;
}

batch_decoder::sequence_id batch_decoder::add_handoff(sequence_handoff handoff) {
  generation_request& request = handoff.request;
  if (request.speculative_mtp && model_->mtp_depth() < 1)
    fail("a speculative sequence's hand-off needs an MTP module; this decoder's model has none");
  request.prefill_only = false;
  const latent_cache::sequence_id cached = cache_->import_rows(handoff.rows);
  auto s = std::make_unique<sequence>(request, model_->config().vocab_size, cached);
  s->prompt_done = s->prompt_length();
  s->token = handoff.token;
  s->draft = handoff.draft;
  s->q = std::move(handoff.draft_distribution);
  s->result = std::move(handoff.result);
  // Its clock started at the prefill: total_seconds counts from the request's start.
  s->start -= std::chrono::duration_cast<clock_type::duration>(
      std::chrono::duration<double>(s->result.prompt_seconds));
  const sequence_id id = next_++;
  sequences_.emplace(id, std::move(s));
  order_.push_back(id);
  return id;
}

sequence_handoff batch_decoder::take_handoff(sequence_id id) {
  const auto it = handoffs_.find(id);
  if (it == handoffs_.end()) fail("sequence {} has no hand-off", id);
  sequence_handoff out = std::move(it->second);
  handoffs_.erase(it);
  return out;
}

void batch_decoder::cancel(sequence_id id) {
  const auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  cache_->release(it->second->cache_id);
  sequences_.erase(it);
  order_.erase(std::find(order_.begin(), order_.end(), id));
}

generation_result batch_decoder::take_result(sequence_id id) {
  const auto it = finished_.find(id);
  if (it == finished_.end()) fail("sequence {} has no finished result", id);
  generation_result out = std::move(it->second);
  finished_.erase(it);
  return out;
}

std::vector<std::int32_t> batch_decoder::step_tokens(const sequence& s) const {
  if (s.reading_prompt()) {
    const std::int64_t rest = s.prompt_length() - s.prompt_done;
    const std::int64_t n =
        options_.prefill_chunk > 0 ? std::min(options_.prefill_chunk, rest) : rest;
    const auto first = s.request.prompt.begin() + s.prompt_done;
    return {first, first + n};
  }
  std::vector<std::int32_t> in{s.token};
  if (s.draft) in.push_back(*s.draft);
  return in;
}

bool batch_decoder::emit(sequence& s, std::int32_t token, event& e) {
  s.result.tokens.push_back(token);
  e.tokens.push_back(token);
  if (s.request.eos && token == *s.request.eos) {
    s.result.stop = "eos";
    s.done = true;
  } else if (static_cast<std::int64_t>(s.result.tokens.size()) >= s.request.max_new_tokens) {
    s.result.stop = "length";
    s.done = true;
  }
  return s.done;
}

void batch_decoder::draft(const tensor& hidden, const std::vector<mtp_rows>& rows) {
  // The MTP module reads, at each row's position, the main model's hidden state there and the
  // token after it, through its own cache layer.
  const std::int64_t h = hidden.size(2);
  std::vector<latent_cache::sequence_id> ids;
  std::vector<std::int64_t> counts, starts, last_rows;
  std::vector<std::int32_t> next;
  for (const mtp_rows& m : rows) {
    ids.push_back(m.owner->cache_id);
    counts.push_back(m.count);
    starts.push_back(m.start);
    next.insert(next.end(), m.next.begin(), m.next.end());
    if (!m.owner->reading_prompt()) last_rows.push_back(static_cast<std::int64_t>(next.size()) - 1);
  }
  const auto total = static_cast<std::int64_t>(next.size());
  tensor previous = tensor::empty(dtype::f32, {1, total, h}, context_->where());
  std::int64_t at = 0;
  for (const mtp_rows& m : rows) {
    kernels::ops::copy_2d(context_->abi(), previous.data_as<float>() + at * h, h,
                          hidden.data_as<float>() + m.row * h, h, m.count, h);
    at += m.count;
  }
  cache_step step(*cache_, ids, counts, starts);  // positions the main model already holds
  const tensor mtp_hidden = model_->mtp_forward(*context_, 1, step, previous, next);
  step.commit();
  if (last_rows.empty()) return;
  const tensor logits = model_->logits(*context_, mtp_hidden, last_rows, 1);
  std::int64_t row = 0;
  for (const mtp_rows& m : rows) {
    sequence& s = *m.owner;
    if (s.reading_prompt()) continue;  // a prompt chunk: no draft before its last one
    s.sampler.distribution(logits, row++, s.q);
    s.draft = s.sampler.draw(s.q, s.result.tokens.size(), draft_stream);
  }
}

std::vector<batch_decoder::event> batch_decoder::step() {
  std::vector<event> events;
  if (order_.empty()) return events;
  // What every sequence feeds, and which rows of the forward need logits.
  std::vector<sequence*> batch;
  std::vector<sequence_id> batch_ids;
  std::vector<latent_cache::sequence_id> ids;
  std::vector<std::int64_t> counts, logit_rows;
  std::vector<std::int32_t> tokens;
  for (const sequence_id id : order_) {
    sequence* s = sequences_.at(id).get();
    const std::vector<std::int32_t> in = step_tokens(*s);
    const auto first_row = static_cast<std::int64_t>(tokens.size());
    const auto n = static_cast<std::int64_t>(in.size());
    if (!s->reading_prompt())
      for (std::int64_t r = 0; r < n; ++r) logit_rows.push_back(first_row + r);
    else if (s->prompt_done + n == s->prompt_length())
      logit_rows.push_back(first_row + n - 1);  // the prompt's last position gives a token
    batch.push_back(s);
    batch_ids.push_back(id);
    ids.push_back(s->cache_id);
    counts.push_back(n);
    tokens.insert(tokens.end(), in.begin(), in.end());
  }
  cache_step main(*cache_, ids, counts);  // throws, changing nothing, when the cache is full
  const tensor hidden = model_->forward(*context_, main, tokens);
  const tensor logits =
      logit_rows.empty() ? tensor() : model_->logits(*context_, hidden, logit_rows);
  main.commit();

  std::vector<std::int64_t> drafted_before, accepted_before;
  for (const sequence* s : batch) {
    drafted_before.push_back(s->result.drafted);
    accepted_before.push_back(s->result.accepted);
  }

  // Each sequence's tokens, and what the speculative ones' MTP modules read.
  std::vector<mtp_rows> mtp;
  std::int64_t row = 0, logit = 0;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    sequence& s = *batch[i];
    event e;
    e.id = batch_ids[i];
    const std::int64_t n = counts[i], cached = main.cached()[i];
    mtp_rows m;
    m.owner = &s;
    m.row = row;
    m.start = cached;
    if (s.reading_prompt()) {
      const std::int64_t a = s.prompt_done;
      s.prompt_done += n;
      const bool complete = !s.reading_prompt();
      if (complete) {
        s.sampler.distribution(logits, logit++, s.p);
        s.token = s.sampler.draw(s.p, 0, token_stream);
        s.result.prompt_seconds = seconds_since(s.start);
        emit(s, s.token, e);
      }
      if (s.request.speculative_mtp && !s.done) {
        // Position j reads token j + 1: the prompt's, or the token just chosen at its end.
        m.count = n;
        m.next.assign(s.request.prompt.begin() + a + 1,
                      s.request.prompt.begin() + std::min(a + n + 1, s.prompt_length()));
        if (complete) m.next.push_back(s.token);
      }
    } else {
      ++s.result.decode_forwards;
      const auto index = static_cast<std::uint64_t>(s.result.tokens.size());
      s.sampler.distribution(logits, logit, s.p);
      if (!s.draft) {
        s.token = s.sampler.draw(s.p, index, token_stream);
        emit(s, s.token, e);
      } else {
        ++s.result.drafted;
        const auto [chosen, kept] =
            verify_draft(s.p, s.q, *s.draft, s.sampler.uniform(index, accept_stream),
                         s.sampler.uniform(index, token_stream));
        m.next.push_back(chosen);
        s.token = chosen;
        if (kept) ++s.result.accepted;
        if (!emit(s, chosen, e) && kept) {  // the second row gives the token after the draft
          s.sampler.distribution(logits, logit + 1, s.p);
          s.token = s.sampler.draw(s.p, index + 1, token_stream);
          m.next.push_back(s.token);
          emit(s, s.token, e);
        }
        if (!kept) cache_->truncate(s.cache_id, cached + 1);  // the draft's row is dropped
        m.count = static_cast<std::int64_t>(m.next.size());
      }
      logit += n;
    }
    if (m.count > 0 && !s.done) mtp.push_back(std::move(m));
    row += n;
    e.finished = s.done;
    events.push_back(std::move(e));
  }
  if (!mtp.empty()) draft(hidden, mtp);

  if (options_.metrics != nullptr) {
    std::int64_t generated = 0, drafted = 0, accepted = 0;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      generated += static_cast<std::int64_t>(events[i].tokens.size());
      drafted += batch[i]->result.drafted - drafted_before[i];
      accepted += batch[i]->result.accepted - accepted_before[i];
    }
    options_.metrics->tokens_generated(generated);
    if (drafted > 0) options_.metrics->speculative_drafts(drafted, accepted);
  }

  // Finished sequences leave the batch; prefill_only ones with their prompt read, for another
  // decoder.
  for (std::size_t i = 0; i < batch.size(); ++i) {
    sequence& s = *batch[i];
    if (!s.done && s.request.prefill_only && !s.reading_prompt()) {
      sequence_handoff h{s.request,      std::move(s.result),
                         s.token,        s.draft,
                         std::move(s.q), cache_->export_rows(s.cache_id, cache_->where())};
      cache_->release(s.cache_id);
      handoffs_.emplace(batch_ids[i], std::move(h));
      sequences_.erase(batch_ids[i]);
      events[i].handed_off = true;
      continue;
    }
    if (!s.done) continue;
    s.result.total_seconds = seconds_since(s.start);
    cache_->release(s.cache_id);
    finished_.emplace(batch_ids[i], std::move(s.result));
    sequences_.erase(batch_ids[i]);
  }
  std::erase_if(order_, [&](sequence_id id) { return sequences_.count(id) == 0; });
  return events;
}

}  // namespace troupe
