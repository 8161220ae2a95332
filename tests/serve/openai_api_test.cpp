// The OpenAI-compatible API's JSON (runtime/serve/openai_api.hpp): completion and chat requests
// become generation requests; malformed JSON, an unknown model (404 model_not_found), a prompt
// past the context length (context_length_exceeded), n > 1 and options the server does not offer
// are the errors OpenAI clients expect; responses and stream chunks have OpenAI's shape.
#include <gtest/gtest.h>

#include <variant>

#include "runtime/serve/openai_api.hpp"

namespace {

using namespace troupe;
using json = nlohmann::json;

openai_model byte_model() {
  openai_model m;
  m.name = "troupe-test";
  m.encode = [](std::string_view text) {
    return std::vector<std::int32_t>(text.begin(), text.end());
  };
  m.decode = [](const std::vector<std::int32_t>& ids) {
    return std::string(ids.begin(), ids.end());
  };
  m.bos_text = "^";
  m.eos_text = "$";
  m.eos = '$';
  m.context_length = 64;
  m.max_tokens_limit = 20;
  return m;
}

openai_request parsed(std::string_view body, bool chat = false) {
  auto r = parse_openai_request(body, chat, byte_model());
  if (auto* e = std::get_if<openai_error>(&r)) ADD_FAILURE() << e->body.dump();
  return std::get<openai_request>(r);
}

json error_of(std::string_view body, int status, bool chat = false) {
  auto r = parse_openai_request(body, chat, byte_model());
  const auto* e = std::get_if<openai_error>(&r);
  EXPECT_NE(e, nullptr) << body;
  if (e == nullptr) return {};
  EXPECT_EQ(e->status, status) << e->body.dump();
  return e->body["error"];
}

TEST(OpenAiApi, CompletionRequestsBecomeGenerationRequests) {
  const openai_request r = parsed(
      R"({"model": "troupe-test", "prompt": "hi", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "seed": 7, "stream": true})");
  EXPECT_FALSE(r.chat);
  EXPECT_TRUE(r.stream);
  EXPECT_EQ(r.generation.prompt, (std::vector<std::int32_t>{'^', 'h', 'i'}));  // BOS first
  EXPECT_EQ(r.generation.max_new_tokens, 5);
  EXPECT_EQ(r.generation.sampling.temperature, 0.0f);
  EXPECT_EQ(r.generation.sampling.top_p, 0.5f);
  EXPECT_EQ(r.generation.sampling.seed, 7u);
  EXPECT_EQ(r.generation.eos, std::optional<std::int32_t>('$'));
  const openai_request ids = parsed(R"({"model": "troupe-test", "prompt": [1, 2, 3]})");
  EXPECT_EQ(ids.generation.prompt, (std::vector<std::int32_t>{1, 2, 3}));
  EXPECT_EQ(ids.generation.max_new_tokens, 16);  // OpenAI's default
  EXPECT_FALSE(ids.generation.speculative_mtp);
  // A server started with --speculative mtp drafts every request.
  openai_model mtp = byte_model();
  mtp.speculative_mtp = true;
  const auto drafted =
      parse_openai_request(R"({"model": "troupe-test", "prompt": "hi"})", false, mtp);
  ASSERT_TRUE(std::holds_alternative<openai_request>(drafted));
  EXPECT_TRUE(std::get<openai_request>(drafted).generation.speculative_mtp);
}

TEST(OpenAiApi, ChatRequestsUseDeepSeeksChatFormat) {
  const openai_request r =
      parsed(R"({"model": "troupe-test", "messages": [{"role": "user", "content": "hi"}]})", true);
  EXPECT_TRUE(r.chat);
  const std::string prompt(r.generation.prompt.begin(), r.generation.prompt.end());
  EXPECT_EQ(prompt, "^<｜User｜>hi<｜Assistant｜>");
  EXPECT_EQ(r.generation.max_new_tokens, 20);  // as much as the limits allow
  EXPECT_EQ(error_of(R"({"model": "troupe-test", "messages": [{"role": "robot", "content": "x"}]})",
                     400, true)["param"],
            "messages");
}

TEST(OpenAiApi, BadRequestsGetOpenAisErrors) {
  EXPECT_NE(error_of("{not json", 400)["message"].get<std::string>().find("not JSON"),
            std::string::npos);
  const json unknown = error_of(R"({"model": "gpt-4", "prompt": "x"})", 404);
  EXPECT_EQ(unknown["code"], "model_not_found");
  EXPECT_EQ(unknown["type"], "invalid_request_error");
  const json long_prompt = error_of(
      R"({"model": "troupe-test", "prompt": "01234567890123456789012345678901234567890123456789", "max_tokens": 20})",
      400);
  EXPECT_EQ(long_prompt["code"], "context_length_exceeded");
  EXPECT_NE(long_prompt["message"].get<std::string>().find("maximum context length is 64 tokens"),
            std::string::npos);
  EXPECT_EQ(error_of(R"({"model": "troupe-test", "prompt": "x", "n": 2})", 400)["param"], "n");
  EXPECT_EQ(error_of(R"({"model": "troupe-test", "prompt": "x", "stop": ["\n"]})", 400)["param"],
            "stop");
  EXPECT_EQ(error_of(R"({"model": "troupe-test", "prompt": "x", "temperature": 3})", 400)["param"],
            "temperature");
  EXPECT_EQ(error_of(R"({"model": "troupe-test", "prompt": "x", "max_tokens": "5"})", 400)["param"],
            "max_tokens");
  EXPECT_EQ(error_of(R"({"model": "troupe-test", "prompt": ["a", "b"]})", 400)["param"], "prompt");
  EXPECT_EQ(error_of(R"({"model": "troupe-test"})", 400)["param"], "prompt");
}

TEST(OpenAiApi, ResponsesAndStreamChunksHaveOpenAisShape) {
  const openai_model model = byte_model();
  const openai_request r = parsed(R"({"model": "troupe-test", "prompt": "hi"})");
  generation_result result;
  result.tokens = {'o', 'k', '$'};
  result.stop = "eos";
  const json response = openai_response(r, result, model, "cmpl-1", 1700000000);
  EXPECT_EQ(response["object"], "text_completion");
  EXPECT_EQ(response["choices"][0]["text"], "ok");
  EXPECT_EQ(response["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(response["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(response["usage"]["completion_tokens"], 3);
  EXPECT_EQ(response["usage"]["total_tokens"], 6);
  const std::string chunk = openai_stream_chunk(r, "ok", "", model, "cmpl-1", 1700000000);
  ASSERT_TRUE(chunk.starts_with("data: ") && chunk.ends_with("\n\n")) << chunk;
  const json parsed_chunk = json::parse(chunk.substr(6));
  EXPECT_EQ(parsed_chunk["choices"][0]["text"], "ok");
  EXPECT_TRUE(parsed_chunk["choices"][0]["finish_reason"].is_null());
  openai_request chat =
      parsed(R"({"model": "troupe-test", "messages": [{"role": "user", "content": "x"}]})", true);
  const json chat_response = openai_response(chat, result, model, "chatcmpl-1", 1);
  EXPECT_EQ(chat_response["object"], "chat.completion");
  EXPECT_EQ(chat_response["choices"][0]["message"]["content"], "ok");
  const json last = json::parse(openai_stream_chunk(chat, "", "length", model, "c", 1).substr(6));
  EXPECT_EQ(last["object"], "chat.completion.chunk");
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(openai_stream_done, "data: [DONE]\n\n");
}

TEST(OpenAiApi, ANumberBeyondDoubleIsA400) {
  // Found by fuzz-openai-request: nlohmann::json throws out_of_range, not parse_error, for it.
  const auto r = parse_openai_request(R"({"model": "troupe-test", "prompt": "x", "top_p": 1e999})",
                                      false, byte_model());
  ASSERT_TRUE(std::holds_alternative<openai_error>(r));
  EXPECT_EQ(std::get<openai_error>(r).status, 400);
}

TEST(OpenAiApi, StreamsHoldBackACharacterCutAtTheEnd) {
  EXPECT_EQ(utf8_complete_prefix(""), 0u);
  EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
  const std::string e_acute = "\xC3\xA9", euro = "\xE2\x82\xAC", emoji = "\xF0\x9F\x98\x80";
  EXPECT_EQ(utf8_complete_prefix("a" + e_acute), 3u);
  EXPECT_EQ(utf8_complete_prefix("a" + e_acute.substr(0, 1)), 1u);
  EXPECT_EQ(utf8_complete_prefix("a" + euro.substr(0, 2)), 1u);
  EXPECT_EQ(utf8_complete_prefix("ab" + emoji.substr(0, 3)), 2u);
  EXPECT_EQ(utf8_complete_prefix(emoji), 4u);
  EXPECT_EQ(utf8_complete_prefix("\x80\x80\x80\x80\x80"), 5u);  // no character to wait for
}

TEST(OpenAiApi, StreamOptionsUsageModelsAndErrorsInAStream) {
  const openai_model model = byte_model();
  const auto with_usage = parse_openai_request(
      R"({"model": "troupe-test", "prompt": "hi", "stream": true,
          "stream_options": {"include_usage": true}})",
      false, model);
  ASSERT_TRUE(std::holds_alternative<openai_request>(with_usage));
  const auto& r = std::get<openai_request>(with_usage);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.generation.eos.has_value());
  const auto no_eos = parse_openai_request(
      R"({"model": "troupe-test", "prompt": "hi", "ignore_eos": true})", false, model);
  ASSERT_TRUE(std::holds_alternative<openai_request>(no_eos));
  EXPECT_FALSE(std::get<openai_request>(no_eos).generation.eos.has_value());
  const auto unstreamed = parse_openai_request(
      R"({"model": "troupe-test", "prompt": "hi", "stream_options": {"include_usage": true}})",
      false, model);
  ASSERT_TRUE(std::holds_alternative<openai_error>(unstreamed));
  EXPECT_EQ(std::get<openai_error>(unstreamed).body["error"]["param"], "stream_options");
  generation_result result;
  result.tokens = {1, 2};
  const json usage = json::parse(openai_stream_usage(r, result, model, "c", 1).substr(6));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 2);
  const json models = openai_models(model);
  EXPECT_EQ(models["data"][0]["id"], "troupe-test");
  EXPECT_EQ(models["data"][0]["max_model_len"], model.context_length);
  const std::string error = openai_stream_error(make_openai_error(500, "boom", "server_error"));
  EXPECT_EQ(json::parse(error.substr(6))["error"]["message"], "boom");
}

}  // namespace
