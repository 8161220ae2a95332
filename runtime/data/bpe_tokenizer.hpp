#pragma once

// The tokenizer of Hugging Face checkpoints: a tokenizer.json with a byte-level BPE model, as
// DeepSeek-V3's (and GPT-2's family) ship it. Encoding splits the text on the added tokens
// (specials such as <｜end▁of▁sentence｜>, matched exactly, longest first), cuts the rest with the
// pre-tokenizer's regular expressions (PCRE2, Unicode properties: the same pieces as the
// Oniguruma expressions of `tokenizers`), maps every byte of a piece to its byte-level symbol and
// applies the merges in rank order. Decoding maps the symbols back to bytes. tokenizer_config.json
// beside it, when present, names the BOS and EOS tokens and whether a BOS starts every text.
// What the file uses and this class does not implement (another model type, a normalizer, byte
// fallback) is an error at load time that names the file and the key, never a silent difference.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace troupe {

class bpe_tokenizer {
 public:
  /// Reads `path`: a tokenizer.json, or a directory holding one (and maybe
  /// tokenizer_config.json). Throws troupe::error naming the file, the key and the cause.
  static bpe_tokenizer load(const std::filesystem::path& path);

  bpe_tokenizer(bpe_tokenizer&&) noexcept;
  bpe_tokenizer& operator=(bpe_tokenizer&&) noexcept;
  ~bpe_tokenizer();

  /// Appends the ids of `text` (no BOS or EOS added: see add_bos()).
  void encode(std::string_view text, std::vector<std::int32_t>& out) const;
  std::vector<std::int32_t> encode(std::string_view text) const;
  /// The bytes the ids stand for (added tokens as their text), as tokenizers' ByteLevel decoder
  /// gives them; a character split across tokens stays split (no U+FFFD): what streaming wants.
  /// Throws troupe::error for an id outside the vocabulary.
  std::string decode(std::span<const std::int32_t> ids) const;

  /// One more than the highest id (vocabulary and added tokens).
  std::int64_t vocab_size() const;
  /// The id of a token given as its text (an added token's content, or a vocabulary entry in
  /// its byte-level spelling).
  std::optional<std::int32_t> id_of(std::string_view token) const;
  /// From tokenizer_config.json (absent: none, false).
  std::optional<std::int32_t> bos() const;
  std::optional<std::int32_t> eos() const;
  bool add_bos() const;
  /// tokenizer_config.json's chat_template, empty when it has none.
  const std::string& chat_template() const;

 private:
  struct state;
  /// load() without its translation of nlohmann errors; `reading` names the file it is in.
  static bpe_tokenizer read(const std::filesystem::path& path, std::string& reading);
  explicit bpe_tokenizer(std::unique_ptr<state> s);
  std::unique_ptr<state> s_;
};

}  // namespace troupe
