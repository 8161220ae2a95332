#pragma once

// The OpenAI-compatible API's JSON: requests of POST /v1/completions and /v1/chat/completions
// into generation requests (checked, with the OpenAI error a client expects: HTTP 400 and
// {"error": {"message", "type", "param", "code"}}), and results into responses and the
// server-sent-event chunks of streamed ones. Text goes through the server's tokenizer.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/inference/generation.hpp"

namespace troupe {

/// The server's text codec and limits.
struct openai_model {
  std::string name;  ///< what requests name in "model"
  std::function<std::vector<std::int32_t>(std::string_view)> encode;
  std::function<std::string(const std::vector<std::int32_t>&)> decode;
  std::string bos_text, eos_text;  ///< the chat format's markers
  std::optional<std::int32_t> eos;
  std::int64_t context_length = 4096;  ///< prompt + max_tokens
  std::int64_t max_tokens_limit = 4096;
  std::int64_t drawable_vocab = 0;
  std::int64_t vocab_size = 0;   ///< the model's: token-id prompts must lie below it (0: unchecked)
  std::int64_t created = 0;      ///< Unix time the server loaded it (GET /v1/models)
  bool speculative_mtp = false;  ///< every request drafts with the MTP module (--speculative mtp)
};

/// A client's error: the HTTP status and the OpenAI error object.
struct openai_error {
  int status = 400;
  nlohmann::json body;
};

/// What a request asks for.
struct openai_request {
  bool chat = false;
  bool stream = false;
  bool include_usage = false;  ///< stream_options.include_usage: a last chunk with the usage
  generation_request generation;
};

/// Parses the body of /v1/completions (chat false) or /v1/chat/completions (chat true), with
/// vLLM's extensions top_k and ignore_eos (generate max_tokens whatever comes: benchmarks). Returns
/// the request, or the error to answer (malformed JSON, unknown model, a field of the wrong type
/// or out of range, a prompt past the context length, an option troupe does not offer).
std::variant<openai_request, openai_error> parse_openai_request(std::string_view body, bool chat,
                                                                const openai_model& model);

/// An OpenAI error object with `message`, `type` ("invalid_request_error", ...) and `param`.
openai_error make_openai_error(int status, std::string message,
                               std::string type = "invalid_request_error", std::string param = "");

/// The non-streamed response for a finished request.
nlohmann::json openai_response(const openai_request& request, const generation_result& result,
                               const openai_model& model, std::string_view id,
                               std::int64_t created);

/// One server-sent event of a streamed response: the text of new tokens (finish_reason empty) or
/// the last chunk (text empty, finish_reason "stop" or "length"). "data: {...}\n\n". For a
/// chat, empty text and finish_reason give the first chunk: the delta {"role": "assistant"}.
std::string openai_stream_chunk(const openai_request& request, std::string_view text,
                                std::string_view finish_reason, const openai_model& model,
                                std::string_view id, std::int64_t created);

/// The last chunk of a stream that asked for its usage (stream_options.include_usage): no
/// choices, the usage as a non-streamed response gives it.
std::string openai_stream_usage(const openai_request& request, const generation_result& result,
                                const openai_model& model, std::string_view id,
                                std::int64_t created);

/// An error inside a stream that has begun (the HTTP status went out already): "data: {error}".
std::string openai_stream_error(const openai_error& error);

/// GET /v1/models: the one model this server has.
nlohmann::json openai_models(const openai_model& model);

/// How many leading bytes of `text` a stream can send now: all but an incomplete UTF-8 character
/// at its end (a token may end inside a character; the next token completes it).
std::size_t utf8_complete_prefix(std::string_view text);

/// The stream's end: "data: [DONE]\n\n".
inline constexpr std::string_view openai_stream_done = "data: [DONE]\n\n";

}  // namespace troupe
