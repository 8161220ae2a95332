#include "runtime/serve/openai_server.hpp"

#include <ctime>
#include <random>
#include <sstream>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "runtime/control/http_server.hpp"
#include "runtime/core/error.hpp"
#include "runtime/metrics/gpu_memory.hpp"

namespace troupe {

namespace {

using json = nlohmann::json;

/// "/v1/completions?x=1" -> "/v1/completions".
std::string path_of(const std::string& target) {
  return target.substr(0, target.find('?'));
}

http_reply api_reply(const openai_error& e) {
  return {e.status, e.body.dump(-1, ' ', false, json::error_handler_t::replace)};
}

http_reply api_reply(int status, std::string message, std::string type = "invalid_request_error",
                     std::string code = "") {
  openai_error e = make_openai_error(status, std::move(message), std::move(type));
  if (!code.empty()) e.body["error"]["code"] = std::move(code);
  return api_reply(e);
}

/// "cmpl-" or "chatcmpl-" and 24 random hex digits.
std::string response_id(bool chat) {
  thread_local std::mt19937_64 random{std::random_device{}()};
  return fmt::format("{}-{:012x}{:012x}", chat ? "chatcmpl" : "cmpl", random() & 0xFFFFFFFFFFFFULL,
                     random() & 0xFFFFFFFFFFFFULL);
}

/// What the engine's thread hands the request's handler thread: tokens and the end.
struct exchange_state {
  std::mutex mutex;
  std::condition_variable wake;
  std::vector<std::int32_t> fresh;
  bool done = false;
};

}  // namespace

openai_server::openai_server(request_engine& engine, openai_model model,
                             const metrics_registry& metrics, serving_metrics& serve_metrics,
                             openai_server_options options)
    : engine_(&engine),
      model_(std::move(model)),
      metrics_(&metrics),
      serve_metrics_(&serve_metrics),
      api_key_(std::move(options.api_key)) {
  server_ = std::make_unique<http_server>(
      options.host, options.port, [this](const http_request& r) { return handle(r); },
      options.limits, [this](const http_request& r) { return screen(r); });
}

openai_server::~openai_server() = default;

std::string openai_server::url() const {
  return server_->url();
}

bool openai_server::drain(std::chrono::milliseconds timeout) {
  draining_ = true;
  server_->stop_accepting();
  std::unique_lock lock(mutex_);
  if (idle_.wait_for(lock, timeout, [this] { return running_ == 0; })) return true;
  // Past the deadline: what still runs is cancelled, and its clients told so.
  const std::set<request_engine::ticket> left = tickets_;
  lock.unlock();
  for (const request_engine::ticket id : left) engine_->cancel(id);
  lock.lock();
  idle_.wait_for(lock, std::chrono::seconds(10), [this] { return running_ == 0; });
  return false;
}

void openai_server::track(request_engine::ticket id, bool running) {
  std::lock_guard lock(mutex_);
  if (running)
    tickets_.insert(id);
  else
    tickets_.erase(id);
}

std::optional<http_reply> openai_server::screen(const http_request& request) {
  const std::string path = path_of(request.target);
  const bool api = path.rfind("/v1/", 0) == 0;
  if (api && !api_key_.empty() && !same_secret(request.authorization, "Bearer " + api_key_))
    return api_reply(401,
                     request.authorization.empty()
                         ? "You didn't provide an API key (Authorization: Bearer KEY)"
                         : "Incorrect API key provided",
                     "invalid_request_error", "invalid_api_key");
  static const std::vector<std::pair<std::string, std::string>> routes = {
      {"/v1/completions", "POST"},
      {"/v1/chat/completions", "POST"},
      {"/v1/models", "GET"},
      {"/health", "GET"},
      {"/metrics", "GET"}};
  for (const auto& [route, method] : routes) {
    if (path != route) continue;
    if (request.method != method)
      return api_reply(405, fmt::format("{} takes {}, not {}", path, method, request.method));
    if (method == "POST" && draining_)
      return api_reply(503, "the server is shutting down; it takes no new requests",
                       "server_error");
    return std::nullopt;
  }
  return api_reply(404,
                   fmt::format("no endpoint at {}; this server has POST /v1/completions, POST "
                               "/v1/chat/completions, GET /v1/models, GET /health, GET /metrics",
                               path),
                   "invalid_request_error", "unknown_url");
}

http_reply openai_server::handle(const http_request& request) {
  if (auto refused = screen(request)) return *refused;
  const std::string path = path_of(request.target);
  if (path == "/v1/completions") return generate(request, false);
  if (path == "/v1/chat/completions") return generate(request, true);
  if (path == "/v1/models") return {200, openai_models(model_).dump()};
  if (path == "/metrics") return metrics_text();
  // /health
  if (draining_) return {503, json{{"status", "draining"}}.dump()};
  return {200, json{{"status", "ok"},
                    {"model", model_.name},
                    {"waiting", engine_->queued()},
                    {"running", engine_->decoding()}}
                   .dump()};
}

http_reply openai_server::metrics_text() const {
  auto families = metrics_->registry()->Collect();
  auto gpu = gpu_memory_collectable()->Collect();
  families.insert(families.end(), gpu.begin(), gpu.end());
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return {200, out.str(), "text/plain; version=0.0.4; charset=utf-8"};
}

http_reply openai_server::generate(const http_request& request, bool chat) {
  const char* endpoint = chat ? "chat_completions" : "completions";
  auto parsed = parse_openai_request(request.body, chat, model_);
  if (const auto* e = std::get_if<openai_error>(&parsed)) {
    serve_metrics_->request(endpoint, "invalid");
    return api_reply(*e);
  }
  const openai_request& r = std::get<openai_request>(parsed);
  {
    std::lock_guard lock(mutex_);
    if (draining_) {
      serve_metrics_->request(endpoint, "unavailable");
      return api_reply(503, "the server is shutting down; it takes no new requests",
                       "server_error");
    }
    ++running_;
  }
  struct leave {
    openai_server* server;
    ~leave() {
      {
        std::lock_guard lock(server->mutex_);
        --server->running_;
      }
      server->idle_.notify_all();
    }
  } const guard{this};
  if (r.stream) {
    stream(request, r, endpoint);
    return {};  // the stream was the reply
  }
  request_engine::ticket id = 0;
  std::future<generation_result> future;
  try {
    future = engine_->submit(r.generation, {}, &id);
  } catch (const queue_full& e) {
    serve_metrics_->request(endpoint, "rejected");
    return api_reply(429, e.what(), "rate_limit_error", "queue_full");
  }
  const tracked_ticket tracked(*this, id);
  const auto& exchange = request.exchange;
  if (exchange) exchange->on_client_gone([engine = engine_, id] { engine->cancel(id); });
  generation_result result;
  try {
    result = future.get();
  } catch (const std::exception& e) {
    if (exchange) exchange->on_client_gone({});
    const bool gone = exchange && exchange->client_gone();
    serve_metrics_->request(endpoint, gone ? "cancelled" : "failed");
    return api_reply(gone ? 499 : 500, e.what(), "server_error");
  }
  if (exchange) exchange->on_client_gone({});
  serve_metrics_->request(endpoint, "ok");
  return {200, openai_response(r, result, model_, response_id(chat), std::time(nullptr))
                   .dump(-1, ' ', false, json::error_handler_t::replace)};
}

void openai_server::stream(const http_request& request, const openai_request& r,
                           const char* endpoint) {
  const auto& exchange = request.exchange;
  if (!exchange) fail("a streamed request needs its connection");
  const auto state = std::make_shared<exchange_state>();
  request_engine::ticket id = 0;
  std::future<generation_result> future;
  try {
    future = engine_->submit(
        r.generation,
        [state](std::int32_t token) {
          {
            std::lock_guard lock(state->mutex);
            state->fresh.push_back(token);
          }
          state->wake.notify_one();
        },
        &id,
        [state] {
          {
            std::lock_guard lock(state->mutex);
            state->done = true;
          }
          state->wake.notify_one();
        });
  } catch (const queue_full& e) {
    serve_metrics_->request(endpoint, "rejected");
    const http_reply refused = api_reply(429, e.what(), "rate_limit_error", "queue_full");
    exchange->begin_stream(refused.status, refused.content_type);
    exchange->send(refused.body);
    return;
  }
  const tracked_ticket tracked(*this, id);
  exchange->on_client_gone([engine = engine_, id] { engine->cancel(id); });
  exchange->begin_stream(200, "text/event-stream");
  const std::string response = response_id(r.chat);
  const std::int64_t created = std::time(nullptr);
  // Bytes decoded and not yet sent: a token may end inside a UTF-8 character.
  std::string text;
  bool connected =
      !r.chat || exchange->send(openai_stream_chunk(r, "", "", model_, response, created));
  const auto send_text = [&](bool all) {
    const std::size_t ready = all ? text.size() : utf8_complete_prefix(text);
    if (ready == 0) return;
    connected = exchange->send(openai_stream_chunk(r, std::string_view(text).substr(0, ready), "",
                                                   model_, response, created));
    text.erase(0, ready);
  };
  for (bool done = false; connected && !done;) {
    std::vector<std::int32_t> tokens;
    {
      std::unique_lock lock(state->mutex);
      state->wake.wait(lock, [&] { return state->done || !state->fresh.empty(); });
      tokens.swap(state->fresh);
      done = state->done;
    }
    std::erase_if(tokens,
                  [&](std::int32_t t) { return r.generation.eos && t == *r.generation.eos; });
    if (!tokens.empty()) text += model_.decode(tokens);
    send_text(false);
  }
  if (!connected) {
    serve_metrics_->request(endpoint, "cancelled");  // on_client_gone cancelled it
    return;
  }
  exchange->on_client_gone({});
  try {
    const generation_result result = future.get();
    send_text(true);
    exchange->send(openai_stream_chunk(r, "", result.stop == "eos" ? "stop" : "length", model_,
                                       response, created));
    if (r.include_usage) exchange->send(openai_stream_usage(r, result, model_, response, created));
    exchange->send(openai_stream_done);
    serve_metrics_->request(endpoint, exchange->client_gone() ? "cancelled" : "ok");
  } catch (const std::exception& e) {
    const bool gone = exchange->client_gone();
    serve_metrics_->request(endpoint, gone ? "cancelled" : "failed");
    if (gone) return;
    exchange->send(openai_stream_error(make_openai_error(500, e.what(), "server_error")));
    exchange->send(openai_stream_done);
  }
}

}  // namespace troupe
