#include "runtime/serve/openai_api.hpp"

#include <algorithm>
#include <climits>
#include <random>
#include <variant>

#include <fmt/format.h>

#include "runtime/core/error.hpp"
#include "runtime/data/chat_prompt.hpp"

namespace troupe {

namespace {

using json = nlohmann::json;

/// A field's error, thrown inside parsing and answered as 400.
struct field_error {
  field_error(std::string m, std::string p, int s = 400, std::string c = "")
      : message(std::move(m)), param(std::move(p)), status(s), code(std::move(c)) {}
  std::string message, param;
  int status;
  std::string code;
};

double number(const json& body, const char* key, double fallback, double low, double high) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  if (!body[key].is_number())
    throw field_error{fmt::format("'{}' must be a number, not {}", key, body[key].dump()), key};
  const double v = body[key].get<double>();
  if (!(v >= low && v <= high))
    throw field_error{fmt::format("'{}' is {}; it must lie in [{}, {}]", key, v, low, high), key};
  return v;
}

std::int64_t integer(const json& body, const char* key, std::int64_t fallback, std::int64_t low,
                     std::int64_t high) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  if (!body[key].is_number_integer())
    throw field_error{fmt::format("'{}' must be an integer, not {}", key, body[key].dump()), key};
  const auto v = body[key].get<std::int64_t>();
  if (v < low || v > high)
    throw field_error{fmt::format("'{}' is {}; it must lie in [{}, {}]", key, v, low, high), key};
  return v;
}

void refuse_unsupported(const json& body) {
  for (const char* key : {"stop", "logprobs", "top_logprobs", "echo", "suffix", "best_of",
                          "logit_bias", "tools", "functions", "response_format"}) {
    if (!body.contains(key) || body[key].is_null()) continue;
    if (body[key].is_boolean() && !body[key].get<bool>()) continue;
    throw field_error{fmt::format("'{}' is not supported by this server", key), key};
  }
  if (integer(body, "n", 1, 1, 1 << 20) != 1)
    throw field_error{"'n' must be 1: one completion per request", "n"};
}

std::vector<std::int32_t> completion_prompt(const json& body, const openai_model& model) {
  if (!body.contains("prompt")) throw field_error{"'prompt' is required", "prompt"};
  const json& prompt = body["prompt"];
  if (prompt.is_string()) {
    std::vector<std::int32_t> ids;
    if (model.bos_text.empty() == false && prompt.get<std::string>().rfind(model.bos_text, 0) != 0)
      ids = model.encode(model.bos_text + prompt.get<std::string>());
    else
      ids = model.encode(prompt.get<std::string>());
    return ids;
  }
  if (prompt.is_array() && !prompt.empty() && prompt[0].is_number_integer()) {
    std::vector<std::int32_t> ids;
    const std::int64_t vocab = model.vocab_size > 0 ? model.vocab_size : INT32_MAX + 1LL;
    for (const json& t : prompt) {
      if (!t.is_number_integer() || t.get<std::int64_t>() < 0 || t.get<std::int64_t>() >= vocab)
        throw field_error{fmt::format("'prompt' token {} is not a token id of the model (0 to {})",
                                      t.dump(), vocab - 1),
                          "prompt"};
      ids.push_back(static_cast<std::int32_t>(t.get<std::int64_t>()));
    }
    return ids;
  }
  if (prompt.is_array())
    throw field_error{
        "'prompt' must be one string or one list of token ids: one prompt per request", "prompt"};
  throw field_error{"'prompt' must be a string or a list of token ids", "prompt"};
}

std::vector<std::int32_t> chat_prompt(const json& body, const openai_model& model) {
  if (model.bos_text.empty() || model.eos_text.empty())
    throw field_error{
        "this model's tokenizer has no chat format (no BOS and EOS tokens in "
        "tokenizer_config.json); use /v1/completions",
        "messages"};
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
    throw field_error{"'messages' must be a non-empty list of {role, content}", "messages"};
  std::vector<chat_message> messages;
  for (std::size_t i = 0; i < body["messages"].size(); ++i) {
    const json& m = body["messages"][i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string())
      throw field_error{fmt::format("messages[{}] must have a string role and a string content", i),
                        "messages"};
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  try {
    return model.encode(deepseek_chat_prompt(messages, model.bos_text, model.eos_text));
  } catch (const error& e) {
    throw field_error{e.what(), "messages"};
  }
}

std::string finish_reason(const generation_result& result) {
  return result.stop == "eos" ? "stop" : "length";
}

json usage(const openai_request& request, const generation_result& result) {
  const auto prompt_tokens = static_cast<std::int64_t>(request.generation.prompt.size());
  const auto completion_tokens = static_cast<std::int64_t>(result.tokens.size());
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

std::string event(const json& data) {
  return "data: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace

openai_error make_openai_error(int status, std::string message, std::string type,
                               std::string param) {
  json error{{"message", std::move(message)},
             {"type", std::move(type)},
             {"param", nullptr},
             {"code", nullptr}};
  if (!param.empty()) error["param"] = std::move(param);
  return {status, json{{"error", error}}};
}

std::variant<openai_request, openai_error> parse_openai_request(std::string_view body, bool chat,
                                                                const openai_model& model) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for 1e999
    return make_openai_error(400, fmt::format("the request body is not JSON: {}", e.what()));
  }
  if (!j.is_object()) return make_openai_error(400, "the request body must be a JSON object");
  try {
    if (!j.contains("model") || !j["model"].is_string())
      throw field_error{"'model' is required (a string)", "model"};
    if (j["model"].get<std::string>() != model.name)
      throw field_error{fmt::format("The model '{}' does not exist; this server has '{}'",
                                    j["model"].get<std::string>(), model.name),
                        "model", 404, "model_not_found"};
    refuse_unsupported(j);
    openai_request r;
    r.chat = chat;
    if (j.contains("stream") && !j["stream"].is_null()) {
      if (!j["stream"].is_boolean()) throw field_error{"'stream' must be true or false", "stream"};
      r.stream = j["stream"].get<bool>();
    }
    if (j.contains("stream_options") && !j["stream_options"].is_null()) {
      const json& options = j["stream_options"];
      if (!r.stream)
        throw field_error{"'stream_options' is only allowed with 'stream': true", "stream_options"};
      if (!options.is_object() ||
          (options.contains("include_usage") && !options["include_usage"].is_boolean()))
        throw field_error{"'stream_options' must be {\"include_usage\": true or false}",
                          "stream_options"};
      r.include_usage = options.value("include_usage", false);
    }
    generation_request& g = r.generation;
    g.prompt = chat ? chat_prompt(j, model) : completion_prompt(j, model);
    if (g.prompt.empty())
      throw field_error{"the prompt encodes to no token", chat ? "messages" : "prompt"};
    const auto prompt_length = static_cast<std::int64_t>(g.prompt.size());
    const std::int64_t room =
        std::min(model.max_tokens_limit, model.context_length - prompt_length);
    const char* max_key =
        chat && j.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    g.max_new_tokens =
        integer(j, max_key, chat ? std::max<std::int64_t>(room, 1) : 16, 1, model.max_tokens_limit);
    if (prompt_length + g.max_new_tokens > model.context_length)
      throw field_error{
          fmt::format("This model's maximum context length is {} tokens. However, you "
                      "requested {} tokens ({} in the prompt, {} for the completion).",
                      model.context_length, prompt_length + g.max_new_tokens, prompt_length,
                      g.max_new_tokens),
          max_key, 400, "context_length_exceeded"};
    g.sampling.temperature = static_cast<float>(number(j, "temperature", 1.0, 0.0, 2.0));
    g.sampling.top_p = static_cast<float>(number(j, "top_p", 1.0, 1e-9, 1.0));
    g.sampling.top_k = static_cast<std::int32_t>(integer(j, "top_k", 0, 0, 1 << 30));
    g.sampling.seed = static_cast<std::uint64_t>(
        integer(j, "seed", static_cast<std::int64_t>(std::random_device{}() >> 1), 0, INT64_MAX));
    g.eos = model.eos;
    g.speculative_mtp = model.speculative_mtp;
    if (j.contains("ignore_eos") && !j["ignore_eos"].is_null()) {  // vLLM's extension
      if (!j["ignore_eos"].is_boolean())
        throw field_error{"'ignore_eos' must be true or false", "ignore_eos"};
      if (j["ignore_eos"].get<bool>()) g.eos.reset();
    }
    g.drawable_vocab = model.drawable_vocab;
    return r;
  } catch (const field_error& e) {
    openai_error out = make_openai_error(e.status, e.message, "invalid_request_error", e.param);
    if (!e.code.empty()) out.body["error"]["code"] = e.code;
    return out;
  }
}

nlohmann::json openai_response(const openai_request& request, const generation_result& result,
                               const openai_model& model, std::string_view id,
                               std::int64_t created) {
  std::vector<std::int32_t> tokens = result.tokens;
  if (result.stop == "eos" && !tokens.empty()) tokens.pop_back();
  const std::string text = model.decode(tokens);
  json choice{{"index", 0}, {"finish_reason", finish_reason(result)}};
  if (request.chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice.update({{"text", text}, {"logprobs", nullptr}});
  return {{"id", id},
          {"object", request.chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model.name},
          {"choices", json::array({choice})},
          {"usage", usage(request, result)}};
}

std::string openai_stream_usage(const openai_request& request, const generation_result& result,
                                const openai_model& model, std::string_view id,
                                std::int64_t created) {
  return event({{"id", id},
                {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model.name},
                {"choices", json::array()},
                {"usage", usage(request, result)}});
}

std::string openai_stream_error(const openai_error& error) {
  return event(error.body);
}

nlohmann::json openai_models(const openai_model& model) {
  return {{"object", "list"},
          {"data", json::array({{{"id", model.name},
                                 {"object", "model"},
                                 {"created", model.created},
                                 {"owned_by", "troupe"},
                                 {"max_model_len", model.context_length}}})}};
}

std::size_t utf8_complete_prefix(std::string_view text) {
  // NOTES: only the last character can be cut; walk back over at most 3 continuation bytes to
  // its lead byte and keep it back when the bytes after it are fewer than it announces.
  const std::size_t size = text.size();
  for (std::size_t back = 1; back <= std::min<std::size_t>(4, size); ++back) {
    const auto byte = static_cast<unsigned char>(text[size - back]);
    if ((byte & 0xC0) == 0x80) continue;  // a continuation byte
    const std::size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
    return length > back ? size - back : size;
  }
  return size;  // no lead byte in reach: not UTF-8 there; nothing to wait for
}

std::string openai_stream_chunk(const openai_request& request, std::string_view text,
                                std::string_view finish, const openai_model& model,
                                std::string_view id, std::int64_t created) {
  json choice{{"index", 0}, {"finish_reason", nullptr}};
  if (!finish.empty()) choice["finish_reason"] = finish;
  if (request.chat && finish.empty() && text.empty())
    choice["delta"] = {{"role", "assistant"}, {"content", ""}};  // a stream's first chunk
  else if (request.chat)
    choice["delta"] = finish.empty() ? json{{"content", text}} : json::object();
  else
    choice.update({{"text", text}, {"logprobs", nullptr}});
  return event({{"id", id},
                {"object", request.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model.name},
                {"choices", json::array({choice})}});
}

}  // namespace troupe
