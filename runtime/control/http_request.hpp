#pragma once

// An HTTP request to the control endpoint as its handlers see it, the reply they give, the limits
// a request must keep to, and the parsing step on raw bytes (for tests and fuzzing: the endpoint
// parses with the same parser settings and the same errors).

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace troupe {

/// The connection a request came on, as its handler sees it: whether the client is still there,
/// and a reply sent in pieces (server-sent events). Thread-safe.
class http_exchange {
 public:
  virtual ~http_exchange() = default;
  /// True once the client has closed the connection (or the server has dropped it).
  virtual bool client_gone() const = 0;
  /// Calls `f` once, on the server's I/O thread, when the client goes (at once, on the caller's
  /// thread, when it has gone already); `f` must not block. A second call replaces the first.
  virtual void on_client_gone(std::function<void()> f) = 0;
  /// Starts a reply sent in pieces: the status line and the headers now (chunked transfer
  /// encoding), the body through send(). It ends when the handler returns; the handler's
  /// http_reply is ignored then.
  virtual void begin_stream(int status, std::string content_type) = 0;
  /// Sends the next piece of the streamed reply. Waits while the client is more than
  /// http_limits::stream_backlog bytes behind; false when the client has gone.
  virtual bool send(std::string_view piece) = 0;
};

struct http_request {
  std::string method;         ///< "GET", "POST", ...
  std::string target;         ///< "/v1/status"
  std::string authorization;  ///< the Authorization header, or ""
  std::string body;
  std::string peer;  ///< "127.0.0.1:40312"
  /// The connection (null for a request from parse_http_request).
  std::shared_ptr<http_exchange> exchange;
};

struct http_reply {
  int status = 200;
  std::string body;  ///< JSON unless content_type says otherwise
  std::string content_type = "application/json";
};

/// What a client of the control endpoint may take and send. A request that breaks one is
/// answered with a 4xx and {"error": ...} naming the limit (or, cut off, simply closed).
struct http_limits {
  /// From the connection's accept to the end of its headers; past it: 408 and closed.
  std::chrono::milliseconds header_deadline{2000};
  /// From the end of the headers to the end of the body; past it: 408 and closed.
  std::chrono::milliseconds body_deadline{10000};
  /// For the reply to go out; past it the connection is closed.
  std::chrono::milliseconds reply_deadline{10000};
  /// After the reply, unread request bytes are read away for up to this long before the close
  /// (a close with unread bytes resets the connection, and the client may never see the reply).
  std::chrono::milliseconds linger{1000};
  /// The request line and the headers together; over it: 431.
  std::size_t header_limit = 8 * 1024;
  /// The body; over it: 413 (at once when Content-Length says so).
  std::size_t body_limit = 1024 * 1024;
  /// Connections open at once. One more drops the oldest connection that is still sending its
  /// headers (or lingering after its reply); when there is none, the new one is closed.
  std::size_t max_connections = 256;
  /// Requests handled at once (each on a thread of its own); one more is answered 503.
  std::size_t max_handlers = 16;
  /// Bytes of a streamed reply the client may be behind before http_exchange::send waits.
  std::size_t stream_backlog = 1024 * 1024;
};

/// Whether two secrets (a bearer token, an API key) are equal, in a time that says nothing about
/// where they differ.
bool same_secret(std::string_view given, std::string_view expected);

/// What parse_http_request made of some bytes: exactly one of three outcomes.
struct http_parse_result {
  std::optional<http_request> request;  ///< the bytes begin with a whole request (peer "")
  std::optional<http_reply> refusal;    ///< 400/413/431 with {"error": ...}: they cannot
  std::size_t consumed = 0;             ///< the bytes `request` took
  /// Neither: the bytes end before the request does (the endpoint would wait for more).
  bool incomplete() const { return !request && !refusal; }
};

/// Parses the HTTP/1.x request at the start of `bytes` as the endpoint does (Beast's
/// request_parser, the header and body limits of `limits`, the same errors). Never throws for
/// any input.
http_parse_result parse_http_request(std::string_view bytes, const http_limits& limits = {});

}  // namespace troupe
