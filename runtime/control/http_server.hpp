#pragma once

// A small HTTP/1.1 server for a job's control endpoint (Boost.Beast underneath): one request per
// connection, each connection on a thread of its own, so a request that waits for the step loop
// (a swap, a pause) never holds up another (a status).

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace troupe {

struct http_request {
  std::string method;         ///< "GET", "POST", ...
  std::string target;         ///< "/v1/status"
  std::string authorization;  ///< the Authorization header, or ""
  std::string body;
  std::string peer;  ///< "127.0.0.1:40312"
};

struct http_reply {
  int status = 200;
  std::string body;  ///< JSON
};

class http_server {
 public:
  using handler = std::function<http_reply(const http_request&)>;

  /// Listens on host:port (port 0: a free one). A client has `request_deadline` to send its
  /// whole request; at most 32 connections are served at once. Throws troupe::error naming the
  /// address and the cause when it cannot listen.
  http_server(const std::string& host, int port, handler on_request,
              std::chrono::milliseconds request_deadline = std::chrono::seconds(10));
  /// Stops accepting, closes open connections and waits for their threads.
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  int port() const;
  /// "http://host:port".
  std::string url() const;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace troupe
