#include "runtime/data/token_stream.hpp"

#include <numeric>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

/// SplitMix64: a small, fully specified generator, so the data order depends on nothing but the
/// seed (not on the standard library's distributions).
struct splitmix64 {
  std::uint64_t state;
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, bound).
  std::uint64_t below(std::uint64_t bound) { return bound == 0 ? 0 : next() % bound; }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

std::uint64_t mix(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  splitmix64 g{a * 0x2545f4914f6cdd1dULL + b};
  g.state ^= g.next() + c;
  return g.next();
}

}  // namespace

token_stream::token_stream(const text_corpus& corpus, const byte_tokenizer& tokenizer,
                           double fim_rate, std::uint64_t seed)
    : corpus_(corpus), tokenizer_(tokenizer), fim_rate_(fim_rate), seed_(seed) {
  if (!(fim_rate >= 0.0 && fim_rate <= 1.0)) fail("fim_rate must be in [0, 1], got {}", fim_rate);
}

std::uint32_t token_stream::corpus_index(std::uint64_t epoch, std::uint64_t document) {
  if (order_epoch_ != epoch) {
    order_.resize(corpus_.size());
    std::iota(order_.begin(), order_.end(), 0u);
    splitmix64 shuffle{mix(seed_, epoch, 0x5eed)};
    for (std::size_t i = order_.size(); i > 1; --i)
      std::swap(order_[i - 1], order_[shuffle.below(i)]);
    order_epoch_ = epoch;
  }
  return order_[document];
}

const std::vector<std::int32_t>& token_stream::document_tokens(std::uint64_t epoch,
                                                               std::uint64_t document) {
  for (const auto& c : cache_)
    if (c.epoch == epoch && c.document == document) return c.tokens;
  cached_document& slot = cache_[next_slot_];
  next_slot_ ^= 1;
  slot.epoch = epoch;
  slot.document = document;
  std::vector<std::int32_t>& tokens = slot.tokens;
  tokens.clear();
  tokenizer_.encode(corpus_.document(corpus_index(epoch, document)), tokens);
  splitmix64 fim{mix(seed_, epoch, document + 1)};
  if (fim_rate_ > 0.0 && fim.uniform() < fim_rate_ && tokens.size() >= 2) {
    // Two cuts, uniform over the token boundaries: prefix | middle | suffix.
    std::uint64_t a = fim.below(tokens.size() + 1), b = fim.below(tokens.size() + 1);
    if (a > b) std::swap(a, b);
    const special_tokens& s = tokenizer_.specials();
    const auto at = [&](std::uint64_t i) {
      return tokens.begin() + static_cast<std::ptrdiff_t>(i);
    };
    std::vector<std::int32_t> psm;
    psm.reserve(tokens.size() + 4);
    psm.push_back(s.fim_prefix);
    psm.insert(psm.end(), tokens.begin(), at(a));
    psm.push_back(s.fim_suffix);
    psm.insert(psm.end(), at(b), tokens.end());
    psm.push_back(s.fim_middle);
    psm.insert(psm.end(), at(a), at(b));
    tokens = std::move(psm);
  }
  tokens.push_back(tokenizer_.specials().eos);
  return tokens;
}

void token_stream::advance(data_position& p) {
  if (++p.offset < document_tokens(p.epoch, p.document).size()) return;
  p.offset = 0;
  if (++p.document == corpus_.size()) {
    p.document = 0;
    ++p.epoch;
  }
}

void token_stream::seek(const data_position& position) {
  if (position.document >= corpus_.size())
    fail("data position: document {} of a corpus of {}", position.document, corpus_.size());
  const std::size_t size = document_tokens(position.epoch, position.document).size();
  if (position.offset >= size)
    fail("data position: offset {} past the {} tokens of document {}", position.offset, size,
         position.document);
  position_ = position;
}

void token_stream::next_batch(std::int64_t batch, std::int64_t length, std::int32_t* tokens,
                              std::int32_t* targets) {
  for (std::int64_t b = 0; b < batch; ++b) {
    // Read length + 1 tokens; the next sequence starts at the last of them.
    data_position p = position_;
    for (std::int64_t i = 0; i <= length; ++i) {
      const std::int32_t token = document_tokens(p.epoch, p.document)[p.offset];
      if (i < length) tokens[b * length + i] = token;
      if (i > 0) targets[b * length + i - 1] = token;
      if (i == length - 1) {
        advance(p);
        position_ = p;
      } else if (i < length) {
        advance(p);
      }
    }
  }
}

}  // namespace troupe
