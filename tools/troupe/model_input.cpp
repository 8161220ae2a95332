#include "tools/troupe/model_input.hpp"

#include <filesystem>
#include <memory>

#include <fmt/format.h>

#include "runtime/core/error.hpp"
#include "runtime/data/bpe_tokenizer.hpp"
#include "runtime/data/byte_tokenizer.hpp"

namespace troupe::cli {

namespace fs = std::filesystem;

namespace {

/// A troupe training checkpoint (or its ema/ directory): its text went through the byte
/// tokenizer.
bool troupe_checkpoint(const fs::path& model) {
  return fs::exists(model / "trainer_state.json") ||
         (model.filename() == "ema" && fs::exists(model.parent_path() / "trainer_state.json"));
}

}  // namespace

std::optional<text_codec> open_text_codec(const std::string& model_dir, const std::string& chosen,
                                          const model_config& config) {
  const fs::path model(model_dir);
  std::string choice = chosen;
  if (choice.empty()) {
    if (fs::exists(model / "tokenizer.json"))
      choice = model_dir;
    else if (troupe_checkpoint(fs::absolute(model).lexically_normal()))
      choice = "bytes";
    else
      return std::nullopt;
  }
  text_codec codec;
  if (choice == "bytes") {
    auto bytes = std::make_shared<byte_tokenizer>(config);
    codec.encode = [bytes](std::string_view text, std::vector<std::int32_t>& out) {
      bytes->encode(text, out);
    };
    codec.decode = [bytes](const std::vector<std::int32_t>& ids) { return bytes->decode(ids); };
    codec.bos = bytes->specials().bos;
    codec.eos = bytes->specials().eos;
    codec.add_bos = true;  // troupe's documents start with BOS
    codec.vocab_size = bytes->vocab_size();
    return codec;
  }
  auto bpe = std::make_shared<bpe_tokenizer>(bpe_tokenizer::load(choice));
  codec.encode = [bpe](std::string_view text, std::vector<std::int32_t>& out) {
    bpe->encode(text, out);
  };
  codec.decode = [bpe](const std::vector<std::int32_t>& ids) { return bpe->decode(ids); };
  codec.bos = bpe->bos();
  codec.eos = bpe->eos();
  codec.add_bos = bpe->add_bos();
  codec.vocab_size = bpe->vocab_size();
  codec.chat_tokens = true;
  return codec;
}

void require_mtp(const hf_checkpoint& checkpoint, const std::string& model,
                 std::string_view option) {
  const model_config& config = checkpoint.config();
  if (config.num_nextn_predict_layers < 1)
    fail("{}: {} has no MTP module (config.json num_nextn_predict_layers = 0); drop {}", option,
         model, option);
  const std::string mtp_weight =
      fmt::format("model.layers.{}.eh_proj.weight", config.num_hidden_layers);
  if (!checkpoint.contains(mtp_weight))
    fail(
        "{}: {} has no weights for its MTP module (no {}: a checkpoint saved without "
        "model.layers.{}.*); drop {}",
        option, model, mtp_weight, config.num_hidden_layers, option);
}

}  // namespace troupe::cli
