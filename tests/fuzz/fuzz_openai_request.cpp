// libFuzzer target: the body a client posts to `troupe serve`'s /v1/completions and
// /v1/chat/completions, parsed as the server parses it (runtime/serve/openai_api.hpp), through a
// byte codec and DeepSeek's chat format. Every input gives a request within the model's limits or
// an OpenAI error with a 4xx status; nothing throws. A parsed request's response and stream chunks
// are built too (invalid UTF-8 in the text must not throw).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <variant>

#include "runtime/serve/openai_api.hpp"

namespace {

troupe::openai_model byte_model() {
  troupe::openai_model m;
  m.name = "fuzz";
  m.encode = [](std::string_view text) {  // a byte tokenizer: ids 0-255
    std::vector<std::int32_t> ids;
    for (const char c : text) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  };
  m.decode = [](const std::vector<std::int32_t>& ids) {
    std::string text;
    for (const std::int32_t id : ids) text += static_cast<char>(id);
    return text;
  };
  m.bos_text = "<s>";
  m.eos_text = "</s>";
  m.eos = 0;
  m.context_length = 256;
  m.max_tokens_limit = 128;
  m.vocab_size = 256;
  m.drawable_vocab = 256;
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const troupe::openai_model model = byte_model();
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (const bool chat : {false, true}) {
    const auto parsed = troupe::parse_openai_request(body, chat, model);
    if (const auto* error = std::get_if<troupe::openai_error>(&parsed)) {
      if (error->status < 400 || error->status > 499) __builtin_trap();
      if (!error->body.contains("error")) __builtin_trap();
      continue;
    }
    const auto& request = std::get<troupe::openai_request>(parsed);
    const auto& g = request.generation;
    const auto length = static_cast<std::int64_t>(g.prompt.size());
    if (length < 1 || g.max_new_tokens < 1 || length + g.max_new_tokens > model.context_length)
      __builtin_trap();
    for (const std::int32_t id : g.prompt)
      if (id < 0 || id >= model.vocab_size) __builtin_trap();
    troupe::generation_result result;
    result.tokens = g.prompt;  // arbitrary bytes as text
    result.stop = "eos";
    (void)troupe::openai_response(request, result, model, "id", 0).dump();
    (void)troupe::openai_stream_chunk(request, model.decode(g.prompt), "", model, "id", 0);
    (void)troupe::utf8_complete_prefix(model.decode(g.prompt));
  }
  return 0;
}
