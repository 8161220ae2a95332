#pragma once

// Training sequences from a corpus: documents in a seeded random order per epoch, tokenized,
// turned into Fill-in-the-Middle form at `fim_rate` (DeepSeek-V3's PSM layout:
// <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle), each ended by EOS, and packed
// back to back into sequences of a fixed length without padding (DeepSeek-V3 packs documents and
// masks nothing across them). Sequence i holds tokens [i L, i L + L) of the stream and its
// targets are the next tokens [i L + 1, i L + L + 1).
//
// Everything is a function of (seed, epoch, document), so the stream's position is three
// integers and a checkpoint resumes it exactly.

#include <cstdint>
#include <tuple>
#include <vector>

#include "runtime/data/byte_tokenizer.hpp"
#include "runtime/data/text_corpus.hpp"

namespace troupe {

struct data_position {
  std::uint64_t epoch = 0;
  std::uint64_t document = 0;  ///< index into the epoch's document order
  std::uint64_t offset = 0;    ///< tokens of that document already used
  bool operator==(const data_position&) const = default;
  auto fields() { return std::tie(epoch, document, offset); }
};

class token_stream {
 public:
  token_stream(const text_corpus& corpus, const byte_tokenizer& tokenizer, double fim_rate,
               std::uint64_t seed);

  /// The next `batch` sequences of `length` tokens: tokens and targets, i32 [batch, length].
  void next_batch(std::int64_t batch, std::int64_t length, std::int32_t* tokens,
                  std::int32_t* targets);

  data_position position() const { return position_; }
  void seek(const data_position& position);

  /// The tokens of document `document` of `epoch`'s order, as the stream uses them (FIM, EOS).
  const std::vector<std::int32_t>& document_tokens(std::uint64_t epoch, std::uint64_t document);

 private:
  /// The corpus index of the epoch's `document`-th document.
  std::uint32_t corpus_index(std::uint64_t epoch, std::uint64_t document);
  /// One token on from `p`, into the next document (and epoch) at a document's end.
  void advance(data_position& p);

  const text_corpus& corpus_;
  const byte_tokenizer& tokenizer_;
  double fim_rate_;
  std::uint64_t seed_;
  data_position position_;
  std::uint64_t order_epoch_ = ~std::uint64_t{0};
  std::vector<std::uint32_t> order_;
  // The two documents last used (a sequence spans a boundary between two).
  struct cached_document {
    std::uint64_t epoch = ~std::uint64_t{0}, document = 0;
    std::vector<std::int32_t> tokens;
  };
  cached_document cache_[2];
  int next_slot_ = 0;
};

}  // namespace troupe
