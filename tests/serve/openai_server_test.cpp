// The OpenAI-compatible server (runtime/serve/openai_server.hpp) on a transformers fixture, over
// real sockets on 127.0.0.1: a completion gives the tokens generate_sequence gives; a streamed
// one gives the same text in server-sent events, ended by [DONE]; /v1/models, /health and
// /metrics answer; the API key guards /v1/ only; bad requests get OpenAI's errors; a full queue
// is answered 429; a client that closes its stream cancels its request and its cache blocks go
// back; drain() refuses new connections and cancels what outlives its deadline.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <future>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "runtime/serve/openai_server.hpp"
#include "runtime/serve/serving_engine.hpp"
#include "tests/support/fixture_model.hpp"

namespace {

using namespace troupe;
using json = nlohmann::json;

/// A raw connection to the server, for replies that stream and clients that walk away.
class client {
 public:
  explicit client(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  }
  ~client() { close_now(); }
  bool connected() const { return connected_; }

  void send_request(const std::string& method, const std::string& target,
                    const std::string& body = "", const std::string& key = "") {
    std::string head = method + " " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    if (!key.empty()) head += "Authorization: Bearer " + key + "\r\n";
    head += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
            "\r\n\r\n" + body;
    ASSERT_EQ(::send(fd_, head.data(), head.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(head.size()));
  }
  /// Reads until `marker` has come (true) or the server closed (false).
  bool read_until(const std::string& marker) {
    while (received_.find(marker) == std::string::npos) {
      char buffer[4096];
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) return false;
      received_.append(buffer, static_cast<std::size_t>(n));
    }
    return true;
  }
  /// Reads the whole reply (the server closes after it).
  std::string read_all() {
    read_until(std::string(1, '\0'));  // never comes: reads to the close
    return received_;
  }
  void close_now() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string received_;
};

struct reply {
  int status = 0;
  std::string head, body;
};

/// Status, headers and body (chunks joined) of a whole HTTP reply.
reply parse_reply(const std::string& raw) {
  reply r;
  const auto end = raw.find("\r\n\r\n");
  if (raw.size() < 12 || end == std::string::npos) return r;
  r.status = std::stoi(raw.substr(9, 3));
  r.head = raw.substr(0, end);
  std::string body = raw.substr(end + 4);
  if (r.head.find("Transfer-Encoding: chunked") == std::string::npos) {
    r.body = body;
    return r;
  }
  for (std::size_t at = 0;;) {
    const auto line = body.find("\r\n", at);
    if (line == std::string::npos) break;
    const std::size_t size = std::stoul(body.substr(at, line - at), nullptr, 16);
    if (size == 0) break;
    r.body += body.substr(line + 2, size);
    at = line + 2 + size + 2;
  }
  return r;
}

reply call(int port, const std::string& method, const std::string& target,
           const std::string& body = "", const std::string& key = "") {
  client c(port);
  EXPECT_TRUE(c.connected());
  c.send_request(method, target, body, key);
  return parse_reply(c.read_all());
}

/// The data of each server-sent event.
std::vector<std::string> events(const std::string& body) {
  std::vector<std::string> out;
  for (std::size_t at = 0; (at = body.find("data: ", at)) != std::string::npos;) {
    const auto end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return out;
}

/// The fixture model behind an engine and a server; ids 0-95 are the characters ' ' to '\x7f'.
struct served : troupe::testing::fixture_runner {
  explicit served(serving_options engine_options = {}, std::string key = "")
      : fixture_runner("q-lora"),
        model(runner),
        cache(model.cache_shape(dtype::f32, 4), 1 << 22, device::cpu()),
        serve_metrics(*metrics.registry()) {
    engine_options.metrics = &metrics;
    engine_options.serve_metrics = &serve_metrics;
    engine = std::make_unique<serving_engine>(model, cache, context, engine_options);
    openai_model m;
    m.name = "fixture";
    m.encode = [](std::string_view text) {
      std::vector<std::int32_t> ids;
      for (const char c : text) ids.push_back(static_cast<std::int32_t>(c - ' '));
      return ids;
    };
    m.decode = [](const std::vector<std::int32_t>& ids) {
      std::string text;
      for (const std::int32_t id : ids) text += static_cast<char>(' ' + id);
      return text;
    };
    m.context_length = 60;
    m.max_tokens_limit = 60;
    m.vocab_size = 96;
    m.eos = 95;  // outside what greedy decoding of these prompts reaches in 60 tokens
    openai_server_options options;
    options.api_key = std::move(key);
    server = std::make_unique<openai_server>(*engine, m, metrics, serve_metrics, options);
    port = std::stoi(server->url().substr(server->url().rfind(':') + 1));
  }

  cached_model model;
  latent_cache cache;
  metrics_registry metrics;
  serving_metrics serve_metrics;
  std::unique_ptr<serving_engine> engine;
  std::unique_ptr<openai_server> server;
  int port = 0;
};

std::vector<std::int32_t> alone(served& s, const std::string& prompt, int max_tokens) {
  generation_request r;
  for (const char c : prompt) r.prompt.push_back(c - ' ');
  r.max_new_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  r.eos = 95;
  latent_cache own(s.model.cache_shape(dtype::f32, 4), 1 << 20, device::cpu());
  return generate_sequence(s.model, own, s.context, r).tokens;
}

std::string text_of(const std::vector<std::int32_t>& ids) {
  std::string text;
  for (const std::int32_t id : ids)
    if (id != 95) text += static_cast<char>(' ' + id);
  return text;
}

TEST(OpenAIServer, CompletionsStreamedOrNotGiveTheTokensOfGenerate) {
  served s;
  const std::string expected = text_of(alone(s, "hello", 12));
  const std::string body =
      R"({"model":"fixture","prompt":"hello","max_tokens":12,"temperature":0})";
  const reply whole = call(s.port, "POST", "/v1/completions", body);
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json response = json::parse(whole.body);
  EXPECT_EQ(response["choices"][0]["text"], expected);
  EXPECT_EQ(response["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(response["object"], "text_completion");

  const std::string streamed_body =
      R"({"model":"fixture","prompt":"hello","max_tokens":12,"temperature":0,"stream":true,)"
      R"("stream_options":{"include_usage":true}})";
  const reply stream = call(s.port, "POST", "/v1/completions", streamed_body);
  ASSERT_EQ(stream.status, 200);
  EXPECT_NE(stream.head.find("Content-Type: text/event-stream"), std::string::npos);
  const auto data = events(stream.body);
  ASSERT_GE(data.size(), 3u);
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  for (std::size_t i = 0; i + 3 < data.size(); ++i)
    text += json::parse(data[i])["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, expected);
  EXPECT_EQ(json::parse(data[data.size() - 3])["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(json::parse(data[data.size() - 2])["usage"]["completion_tokens"], 12);
  EXPECT_EQ(s.serve_metrics.requests_total("completions", "ok"), 2.0);
  EXPECT_EQ(s.serve_metrics.first_token_count(), 2u);
}

TEST(OpenAIServer, ModelsHealthAndMetrics) {
  served s;
  const reply models = call(s.port, "GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(json::parse(models.body)["data"][0]["id"], "fixture");
  const reply health = call(s.port, "GET", "/health");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(json::parse(health.body)["status"], "ok");
  call(s.port, "POST", "/v1/completions",
       R"({"model":"fixture","prompt":"hi","max_tokens":3,"temperature":0})");
  const reply metrics = call(s.port, "GET", "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.head.find("text/plain"), std::string::npos);
  for (const char* line :
       {"troupe_serve_requests_total{endpoint=\"completions\",outcome=\"ok\"} 1",
        "troupe_serve_time_to_first_token_seconds_count 1", "troupe_generated_tokens_total 3",
        "troupe_kv_cache_blocks{state=\"used\"} 0", "troupe_serve_prompt_tokens_total 2"})
    EXPECT_NE(metrics.body.find(line), std::string::npos) << line << "\n" << metrics.body;
}

TEST(OpenAIServer, BadRequestsGetOpenAIErrors) {
  served s;
  const auto error_of = [](const reply& r) { return json::parse(r.body)["error"]; };
  const reply malformed = call(s.port, "POST", "/v1/completions", "{not json");
  EXPECT_EQ(malformed.status, 400);
  EXPECT_EQ(error_of(malformed)["type"], "invalid_request_error");
  const reply model = call(s.port, "POST", "/v1/completions", R"({"model":"gpt","prompt":"x"})");
  EXPECT_EQ(model.status, 404);
  EXPECT_EQ(error_of(model)["code"], "model_not_found");
  const reply long_request = call(s.port, "POST", "/v1/completions",
                                  R"({"model":"fixture","prompt":"hello","max_tokens":58})");
  EXPECT_EQ(long_request.status, 400);
  EXPECT_EQ(error_of(long_request)["code"], "context_length_exceeded");
  const reply token = call(s.port, "POST", "/v1/completions",
                           R"({"model":"fixture","prompt":[1, 2, 96],"max_tokens":2})");
  EXPECT_EQ(token.status, 400);
  EXPECT_EQ(error_of(token)["param"], "prompt");
  EXPECT_EQ(call(s.port, "GET", "/v1/completions").status, 405);
  EXPECT_EQ(call(s.port, "GET", "/v1/nothing").status, 404);
  EXPECT_EQ(s.serve_metrics.requests_total("completions", "invalid"), 4.0);
}

TEST(OpenAIServer, TheApiKeyGuardsV1Only) {
  served s({}, "sesame");
  const std::string body = R"({"model":"fixture","prompt":"hi","max_tokens":2})";
  const reply none = call(s.port, "POST", "/v1/completions", body);
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(json::parse(none.body)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(call(s.port, "POST", "/v1/completions", body, "wrong").status, 401);
  EXPECT_EQ(call(s.port, "GET", "/v1/models", "", "wrong").status, 401);
  EXPECT_EQ(call(s.port, "POST", "/v1/completions", body, "sesame").status, 200);
  EXPECT_EQ(call(s.port, "GET", "/health").status, 200);
  EXPECT_EQ(call(s.port, "GET", "/metrics").status, 200);
}

/// A request straight to the engine whose token callback holds the engine's thread at its
/// `hold_at`-th token until released (and, holding at a later one, at its first until `go`):
/// the batch stands still while the test arranges the others.
struct holder {
  holder(serving_engine& engine, int hold_at, int max_tokens) {
    generation_request r;
    r.prompt = {40, 41, 42};
    r.max_new_tokens = max_tokens;
    result = engine.submit(r, [this, hold_at](std::int32_t) {
      const int token = ++tokens;
      if (token == 1 && hold_at > 1) go.get_future().wait();
      if (token == hold_at) {
        held.set_value();
        release.get_future().wait();
      }
    });
  }
  std::atomic<int> tokens{0};
  std::promise<void> go, held, release;
  std::future<generation_result> result;
};

TEST(OpenAIServer, AFullQueueIsAnswered429) {
  serving_options options;
  options.max_batch = 1;
  options.max_queue = 1;
  served s(options);
  holder hold(*s.engine, 1, 4);
  hold.held.get_future().wait();  // the engine's thread is held; the batch is full
  client queued(s.port);
  queued.send_request("POST", "/v1/completions",
                      R"({"model":"fixture","prompt":"hi","max_tokens":2,"stream":true})");
  ASSERT_TRUE(queued.read_until("\r\n\r\n"));  // its stream began: it is in the queue
  const reply refused = call(s.port, "POST", "/v1/completions",
                             R"({"model":"fixture","prompt":"hi","max_tokens":2})");
  EXPECT_EQ(refused.status, 429);
  EXPECT_EQ(json::parse(refused.body)["error"]["code"], "queue_full");
  hold.release.set_value();
  EXPECT_EQ(hold.result.get().tokens.size(), 4u);
  EXPECT_NE(queued.read_all().find("[DONE]"), std::string::npos);
  EXPECT_EQ(s.serve_metrics.requests_total("completions", "rejected"), 1.0);
}

TEST(OpenAIServer, AClientThatGoesAwayCancelsItsRequestAndFreesItsBlocks) {
  serving_options options;
  options.max_batch = 2;
  served s(options);
  // The holder stops the engine at its second token, once the stream below joined the batch.
  // The stream ignores EOS: a sampled first token may be EOS, and a finished stream no longer
  // counts as decoding.
  holder hold(*s.engine, 2, 6);
  client leaving(s.port);
  leaving.send_request(
      "POST", "/v1/completions",
      R"({"model":"fixture","prompt":"walk away","max_tokens":50,"stream":true,"ignore_eos":true})");
  ASSERT_TRUE(leaving.read_until("\r\n\r\n"));  // queued behind the holder's first step
  hold.go.set_value();
  hold.held.get_future().wait();
  EXPECT_EQ(s.engine->decoding(), 2);
  leaving.close_now();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the server sees the close
  hold.release.set_value();
  EXPECT_EQ(hold.result.get().tokens.size(), 6u);
  for (int i = 0; i < 200 && s.serve_metrics.requests_total("completions", "cancelled") < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(s.serve_metrics.requests_total("completions", "cancelled"), 1.0);
  for (int i = 0; i < 200 && (s.engine->decoding() > 0 || s.cache.sequences() > 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(s.cache.free_blocks(), s.cache.total_blocks());
  // The stream generated far fewer than its 50 tokens: it was cut, not finished.
  EXPECT_LT(s.metrics.tokens_generated_total(), 6 + 50);
}

TEST(OpenAIServer, DrainRefusesNewConnectionsAndCancelsWhatOutlivesItsDeadline) {
  served s;
  holder hold(*s.engine, 1, 3);
  hold.held.get_future().wait();
  client running(s.port);
  running.send_request("POST", "/v1/completions",
                       R"({"model":"fixture","prompt":"hi","max_tokens":30,"stream":true})");
  ASSERT_TRUE(running.read_until("\r\n\r\n"));
  auto drained = std::async(std::launch::async,
                            [&] { return s.server->drain(std::chrono::milliseconds(200)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(client(s.port).connected());                     // no new connections
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // past the deadline: cancelled
  hold.release.set_value();
  EXPECT_FALSE(drained.get());  // it did not finish by itself
  const std::string body = running.read_all();
  EXPECT_NE(body.find("cancelled"), std::string::npos) << body;
  EXPECT_NE(body.find("[DONE]"), std::string::npos);
  EXPECT_TRUE(s.server->drain(std::chrono::milliseconds(10)));  // nothing runs now
}

}  // namespace
