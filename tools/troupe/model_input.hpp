#pragma once

// What `troupe generate` and `troupe serve` read besides the weights: the model's tokenizer, and
// the checks a model must pass before it is loaded.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/checkpoint/hf_checkpoint.hpp"

namespace troupe::cli {

/// Text in and out of the model: a Hugging Face tokenizer.json, or troupe's byte tokenizer (its
/// own models: every byte a token). Decoding concatenates the tokens' bytes.
struct text_codec {
  std::function<void(std::string_view, std::vector<std::int32_t>&)> encode;
  std::function<std::string(const std::vector<std::int32_t>&)> decode;
  std::optional<std::int32_t> bos, eos;
  bool add_bos = false;
  std::int64_t vocab_size = 0;  ///< ids it can decode
  /// The chat format's tokens (Hugging Face tokenizers only).
  bool chat_tokens = false;
};

/// The tokenizer of `model`: `choice` (a tokenizer.json, its directory, or "bytes"), else the
/// model directory's tokenizer.json, else the byte tokenizer for a troupe checkpoint; nothing
/// when there is none of these.
std::optional<text_codec> open_text_codec(const std::string& model, const std::string& choice,
                                          const model_config& config);

/// Fails, naming `option` and `model`, unless the checkpoint has an MTP module with weights.
void require_mtp(const hf_checkpoint& checkpoint, const std::string& model,
                 std::string_view option);

}  // namespace troupe::cli
