#pragma once

// Byte-level tokenization: every UTF-8 byte is its own token (ids 0-255), so any text encodes
// and nothing needs training or a download. The special tokens follow the model config: its
// bos_token_id and eos_token_id, then the three Fill-in-the-Middle sentinels at the first ids
// above 255 that neither uses.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/model/model_config.hpp"

namespace troupe {

struct special_tokens {
  std::int32_t bos = 256;
  std::int32_t eos = 257;
  std::int32_t fim_prefix = 258;  ///< DeepSeek's <｜fim▁begin｜>
  std::int32_t fim_suffix = 259;  ///< <｜fim▁hole｜>
  std::int32_t fim_middle = 260;  ///< <｜fim▁end｜>
};

class byte_tokenizer {
 public:
  /// Throws troupe::error when the model's vocabulary cannot hold 256 bytes and the special
  /// tokens, or when bos/eos fall among the byte ids.
  explicit byte_tokenizer(const model_config& config);

  const special_tokens& specials() const { return specials_; }
  std::int64_t vocab_size() const { return vocab_size_; }

  void encode(std::string_view text, std::vector<std::int32_t>& out) const;
  /// Bytes back to text; special tokens as "<eos>", "<fim_prefix>", ...
  std::string decode(const std::vector<std::int32_t>& tokens) const;

 private:
  special_tokens specials_;
  std::int64_t vocab_size_;
};

}  // namespace troupe
