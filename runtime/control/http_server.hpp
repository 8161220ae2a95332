#pragma once

// A small HTTP/1.1 server for a job's control endpoint and `troupe serve` (Boost.Beast
// underneath), one request per connection; a handler may stream its reply (http_exchange).
// Connections are read and written by one I/O thread (Asio, asynchronous), so idle or slow clients
// hold no thread; within the deadlines and caps of http_limits they cannot starve the others.
// Handlers run on threads of their own, so one that waits for the step loop (a swap, a pause) holds
// up neither the I/O nor another handler (a status).

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "runtime/control/http_request.hpp"

namespace troupe {

class http_server {
 public:
  /// Answers a whole request (its body read); may block. Runs on a handler thread; what it
  /// throws is answered 500.
  using handler = std::function<http_reply(const http_request&)>;
  /// Looks at a request as soon as its line and headers are in (`body` still empty), on the I/O
  /// thread, so it must not block. A reply answers the request at once (its body is never read,
  /// `handler` does not run); std::nullopt lets it go on to its body and `handler`.
  using screen = std::function<std::optional<http_reply>(const http_request&)>;

  /// Listens on host:port (port 0: a free one) and serves within `limits`. Throws troupe::error
  /// naming the address and the cause when it cannot listen.
  http_server(const std::string& host, int port, handler on_request, http_limits limits = {},
              screen on_headers = {});
  /// Stops accepting, closes every connection (however far its request got) and joins the I/O
  /// thread and the handler threads; a handler still running is waited for.
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// Closes the listening socket (new connections are refused); requests on connections already
  /// open go on. For a drain: stop taking work, finish what runs, then destroy the server.
  void stop_accepting();

  int port() const;
  /// "http://host:port".
  std::string url() const;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace troupe
