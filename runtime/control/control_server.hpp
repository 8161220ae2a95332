#pragma once

// A job's control endpoint: HTTP with JSON bodies on a loopback address, every request guarded
// by the job's token (Authorization: Bearer TOKEN).
//   GET  /v1/status          the job's state
//   POST /v1/COMMAND         pause, resume, checkpoint, swap, ... (what the job registers)
// A request without the right token is refused (401) and logged with its peer; nothing runs.
// That, the route (404) and the method (405) are checked as soon as the headers are in, on the
// server's I/O thread: a refused request never reaches a handler thread, nor is its body read.
// No string in a body may hold a NUL (400 naming the field: paths and names would be cut at it).
// Every request counts in troupe_control_requests_total{command, code}.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/control/http_request.hpp"

namespace prometheus {
class Registry;
}

namespace troupe {

class http_server;

struct control_reply {
  int status = 200;     ///< HTTP status: 200, or 4xx/5xx with {"error": ...}
  nlohmann::json body;  ///< an object
};

/// 4xx/5xx with {"error": message}.
control_reply control_error(int status, const std::string& message);

/// Runs one command; the argument is the request's JSON body ({} when empty).
using control_command = std::function<control_reply(const nlohmann::json& request)>;

class control_server {
 public:
  /// Serves `commands` ("status" answers GET /v1/status, the others POST /v1/NAME) on host:port
  /// (port 0: a free one) within `limits` (http_request.hpp). `log` gets one line per refused or
  /// failed request; it is called from the server's threads, so it must be thread-safe.
  control_server(const std::string& host, int port, std::string token,
                 std::map<std::string, control_command> commands, prometheus::Registry& metrics,
                 std::function<void(const std::string&)> log, const http_limits& limits = {});
  ~control_server();
  control_server(const control_server&) = delete;
  control_server& operator=(const control_server&) = delete;

  /// "http://host:port".
  std::string url() const;

 private:
  /// The token, the route and the method, as soon as the headers are in: a reply refuses.
  std::optional<http_reply> screen(const http_request& request);
  /// The body and the command, on a handler thread.
  http_reply handle(const http_request& request);
  /// Counts the reply under `label` and gives it as HTTP.
  http_reply finish(const std::string& label, const control_reply& reply);

  struct counters;
  std::string token_;
  std::map<std::string, control_command> commands_;
  std::unique_ptr<counters> counters_;
  std::function<void(const std::string&)> log_;
  std::unique_ptr<http_server> server_;
};

}  // namespace troupe
