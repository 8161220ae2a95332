#include "runtime/data/byte_tokenizer.hpp"

#include <set>

#include "runtime/core/error.hpp"

namespace troupe {

byte_tokenizer::byte_tokenizer(const model_config& config) : vocab_size_(config.vocab_size) {
  if (config.bos_token_id < 256 || config.eos_token_id < 256)
    fail(
        "the byte tokenizer keeps ids 0-255 for bytes, but the model config has bos_token_id = "
        "{} and eos_token_id = {}; set both to 256 or more",
        config.bos_token_id, config.eos_token_id);
  specials_.bos = static_cast<std::int32_t>(config.bos_token_id);
  specials_.eos = static_cast<std::int32_t>(config.eos_token_id);
  std::set<std::int64_t> taken = {config.bos_token_id, config.eos_token_id};
  std::int64_t next = 256;
  for (std::int32_t* fim : {&specials_.fim_prefix, &specials_.fim_suffix, &specials_.fim_middle}) {
    while (taken.count(next) != 0) ++next;
    *fim = static_cast<std::int32_t>(next);
    taken.insert(next++);
  }
  const std::int64_t needed = *taken.rbegin() + 1;
  if (config.vocab_size < needed)
    fail(
        "the byte tokenizer needs vocab_size >= {} (256 bytes, bos, eos and 3 FIM tokens), the "
        "model config has {}",
        needed, config.vocab_size);
}

void byte_tokenizer::encode(std::string_view text, std::vector<std::int32_t>& out) const {
  for (const char c : text) out.push_back(static_cast<std::int32_t>(static_cast<unsigned char>(c)));
}

std::string byte_tokenizer::decode(const std::vector<std::int32_t>& tokens) const {
  std::string text;
  for (const std::int32_t t : tokens) {
    if (t >= 0 && t < 256)
      text += static_cast<char>(t);
    else if (t == specials_.bos)
      text += "<bos>";
    else if (t == specials_.eos)
      text += "<eos>";
    else if (t == specials_.fim_prefix)
      text += "<fim_prefix>";
    else if (t == specials_.fim_suffix)
      text += "<fim_suffix>";
    else if (t == specials_.fim_middle)
      text += "<fim_middle>";
    else
      text += "<" + std::to_string(t) + ">";
  }
  return text;
}

}  // namespace troupe
