#pragma once

// A job's control endpoint: HTTP with JSON bodies on a loopback address, every request guarded
// by the job's token (Authorization: Bearer TOKEN).
//   GET  /v1/status          the job's state
//   POST /v1/COMMAND         pause, resume, checkpoint, swap, ... (what the job registers)
// A request without the right token is refused (401) and logged with its peer; nothing runs.
// Every request counts in troupe_control_requests_total{command, code}.

#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace prometheus {
class Registry;
}

namespace troupe {

class http_server;
struct http_request;
struct http_reply;

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
  /// (port 0: a free one). `log` gets one line per refused or failed request.
  control_server(const std::string& host, int port, std::string token,
                 std::map<std::string, control_command> commands, prometheus::Registry& metrics,
                 std::function<void(const std::string&)> log);
  ~control_server();
  control_server(const control_server&) = delete;
  control_server& operator=(const control_server&) = delete;

  /// "http://host:port".
  std::string url() const;

 private:
  http_reply handle(const http_request& request);

  struct counters;
  std::string token_;
  std::map<std::string, control_command> commands_;
  std::unique_ptr<counters> counters_;
  std::function<void(const std::string&)> log_;
  std::unique_ptr<http_server> server_;
};

}  // namespace troupe
