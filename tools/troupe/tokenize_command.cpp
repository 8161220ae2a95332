// `troupe tokenize`: a Hugging Face tokenizer (tokenizer.json, byte-level BPE: DeepSeek-V3's)
// encoding text to ids or decoding ids to text, optionally inside DeepSeek-V3's chat format.
#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/data/bpe_tokenizer.hpp"
#include "runtime/data/chat_prompt.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/token_ids.hpp"

namespace troupe::cli {

namespace {

struct tokenize_options {
  std::string tokenizer;
  std::string text, file, ids;
  bool chat = false, json = false;
};

int tokenize(const tokenize_options& o) {
  if (static_cast<int>(!o.text.empty()) + static_cast<int>(!o.file.empty()) +
          static_cast<int>(!o.ids.empty()) !=
      1)
    fail("give one of --text, --file and --ids");
  const bpe_tokenizer tokenizer = bpe_tokenizer::load(o.tokenizer);
  if (!o.ids.empty()) {
    const auto ids = parse_token_ids(o.ids, tokenizer.vocab_size(), "--ids");
    const std::string text = tokenizer.decode(ids);
    if (o.json)
      fmt::print("{}\n", nlohmann::json{{"ids", ids}, {"text", text}}.dump(
                             -1, ' ', false, nlohmann::json::error_handler_t::replace));
    else
      fmt::print("{}\n", text);
    return exit_ok;
  }
  std::string text = o.text;
  if (!o.file.empty()) {
    std::ifstream in(o.file, std::ios::binary);
    if (!in) fail("--file {}: cannot open it", o.file);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (o.chat) {
    const auto bos = tokenizer.bos(), eos = tokenizer.eos();
    if (!bos || !eos)
      fail("--chat: the tokenizer's tokenizer_config.json names no bos_token and eos_token");
    text = deepseek_chat_prompt({{"user", text}}, tokenizer.decode(std::vector{*bos}),
                                tokenizer.decode(std::vector{*eos}));
  }
  const std::vector<std::int32_t> ids = tokenizer.encode(text);
  if (o.json)
    fmt::print("{}\n", nlohmann::json{{"ids", ids}, {"tokens", ids.size()}, {"text", text}}.dump());
  else
    fmt::print("{}\n", fmt::join(ids, ","));
  return exit_ok;
}

}  // namespace

void add_tokenize_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<tokenize_options>();
  auto* command = app.add_subcommand(
      "tokenize",
      "Encode text to token ids or decode ids to text with a Hugging Face tokenizer.json "
      "(byte-level BPE, as DeepSeek-V3's)");
  command
      ->add_option("--tokenizer", options->tokenizer,
                   "A tokenizer.json, or a model directory holding one (and tokenizer_config.json)")
      ->required();
  command->add_option("--text", options->text, "The text to encode");
  command->add_option("--file", options->file, "Encode this file's text");
  command->add_option("--ids", options->ids, "Comma-separated ids to decode, e.g. 0,100,200");
  command->add_flag("--chat", options->chat,
                    "Encode the text as a user turn of DeepSeek-V3's chat format (BOS, "
                    "<｜User｜>, the text, <｜Assistant｜>)");
  command->add_flag("--json", options->json, "Print one JSON object (ids, tokens, text)");
  command->callback([options, &exit_code] {
    try {
      exit_code = tokenize(*options);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe tokenize: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
