#pragma once

// The HTTP face of a serving engine: OpenAI's endpoints as clients speak them, and a server's
// housekeeping.
//   POST /v1/completions, /v1/chat/completions   generation; "stream": true answers with
//                                                server-sent events, token by token
//   GET  /v1/models                              the model served
//   GET  /health                                 200 while serving, 503 while draining
//   GET  /metrics                                the process's Prometheus metrics
// With an API key, every /v1/ request needs "Authorization: Bearer KEY" (401 otherwise, before
// its body is read); /health and /metrics stay open, as a load balancer and Prometheus expect.
// A full queue is answered 429, a bad request 400 (404 for an unknown model), both in OpenAI's
// error format. A client that closes its connection cancels its request: its cache blocks go
// back at the next step. drain() stops taking requests and waits for those running.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "runtime/control/http_request.hpp"
#include "runtime/metrics/metrics.hpp"
#include "runtime/serve/openai_api.hpp"
#include "runtime/serve/request_engine.hpp"
#include "runtime/serve/serving_metrics.hpp"

namespace troupe {

class http_server;

struct openai_server_options {
  std::string host = "127.0.0.1";
  int port = 0;         ///< 0: a free port
  std::string api_key;  ///< "": no authentication
  http_limits limits;   ///< max_handlers bounds the requests served at once
};

class openai_server {
 public:
  /// Listens at once; throws troupe::error naming the address when it cannot. `engine`,
  /// `metrics` and `serve_metrics` must outlive the server.
  openai_server(request_engine& engine, openai_model model, const metrics_registry& metrics,
                serving_metrics& serve_metrics, openai_server_options options);
  /// Stops the HTTP server; a request still running is cancelled first.
  ~openai_server();
  openai_server(const openai_server&) = delete;
  openai_server& operator=(const openai_server&) = delete;

  /// "http://host:port".
  std::string url() const;

  /// Closes the listening socket, answers new requests on open connections 503, and waits up
  /// to `timeout` for the generation requests running to finish. True when they all did; else
  /// those left are cancelled (a stream ends with an error event) and false is returned.
  bool drain(std::chrono::milliseconds timeout);

 private:
  std::optional<http_reply> screen(const http_request& request);
  http_reply handle(const http_request& request);
  http_reply generate(const http_request& request, bool chat);
  /// A request whose reply streams: tokens become chunks as they come.
  void stream(const http_request& request, const openai_request& parsed, const char* endpoint);
  http_reply metrics_text() const;
  /// A request's ticket while it runs (drain cancels those left).
  void track(request_engine::ticket id, bool running);
  /// Tracks a ticket for as long as it lives.
  struct tracked_ticket {
    tracked_ticket(openai_server& server, request_engine::ticket ticket)
        : owner(server), id(ticket) {
      owner.track(id, true);
    }
    ~tracked_ticket() { owner.track(id, false); }
    tracked_ticket(const tracked_ticket&) = delete;
    tracked_ticket& operator=(const tracked_ticket&) = delete;
    openai_server& owner;
    request_engine::ticket id;
  };

  request_engine* engine_;
  openai_model model_;
  const metrics_registry* metrics_;
  serving_metrics* serve_metrics_;
  std::string api_key_;
  std::atomic<bool> draining_{false};
  std::mutex mutex_;
  std::condition_variable idle_;
  std::int64_t running_ = 0;                  ///< generation requests in their handlers
  std::set<request_engine::ticket> tickets_;  ///< theirs, once submitted
  std::unique_ptr<http_server> server_;
};

}  // namespace troupe
