#include "runtime/control/control_server.hpp"

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <fmt/format.h>

#include "runtime/control/http_server.hpp"

namespace troupe {

namespace {

/// Compares without an early exit, so the time taken says nothing about the token.
bool same_token(const std::string& given, const std::string& expected) {
  if (given.size() != expected.size()) return false;
  unsigned char difference = 0;
  for (std::size_t i = 0; i < given.size(); ++i)
    difference |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return difference == 0;
}

}  // namespace

control_reply control_error(int status, const std::string& message) {
  return {status, nlohmann::json{{"error", message}}};
}

struct control_server::counters {
  prometheus::Family<prometheus::Counter>& requests;
};

control_server::control_server(const std::string& host, int port, std::string token,
                               std::map<std::string, control_command> commands,
                               prometheus::Registry& metrics,
                               std::function<void(const std::string&)> log)
    : token_(std::move(token)), commands_(std::move(commands)), log_(std::move(log)) {
  counters_ = std::make_unique<counters>(counters{
      prometheus::BuildCounter()
          .Name("troupe_control_requests_total")
          .Help("Requests to the job's control endpoint, by command and HTTP status")
          .Register(metrics),
  });
  server_ = std::make_unique<http_server>(
      host, port, [this](const http_request& request) { return handle(request); });
}

control_server::~control_server() = default;

std::string control_server::url() const {
  return server_->url();
}

http_reply control_server::handle(const http_request& request) {
  const std::string prefix = "/v1/";
  std::string command =
      request.target.rfind(prefix, 0) == 0 ? request.target.substr(prefix.size()) : std::string();
  if (const auto query = command.find('?'); query != std::string::npos) command.resize(query);
  control_reply reply;
  const auto it = commands_.find(command);
  const std::string label = it == commands_.end() ? std::string("unknown") : command;
  if (!same_token(request.authorization, "Bearer " + token_)) {
    log_(fmt::format("control: refused {} {} from {}: {}", request.method, request.target,
                     request.peer, request.authorization.empty() ? "no token" : "wrong token"));
    reply = control_error(401,
                          "missing or wrong token (Authorization: Bearer TOKEN, the token is "
                          "in the job's token file)");
  } else if (it == commands_.end()) {
    std::string known;
    for (const auto& [name, fn] : commands_) known += (known.empty() ? "" : ", ") + name;
    reply = control_error(
        404, fmt::format("no command at {}; the commands are /v1/{{{}}}", request.target, known));
  } else if (request.method != (command == "status" ? "GET" : "POST")) {
    reply = control_error(
        405, fmt::format("{} takes {}", request.target, command == "status" ? "GET" : "POST"));
  } else {
    nlohmann::json body = nlohmann::json::object();
    try {
      if (!request.body.empty()) body = nlohmann::json::parse(request.body);
      if (!body.is_object()) throw std::runtime_error("the body is not a JSON object");
      reply = it->second(body);
    } catch (const nlohmann::json::exception& e) {
      reply = control_error(400, fmt::format("bad request body: {}", e.what()));
    } catch (const std::exception& e) {
      reply = control_error(400, e.what());
    }
    if (reply.status >= 400)
      log_(fmt::format("control: {} from {} failed ({}): {}", command, request.peer, reply.status,
                       reply.body.value("error", std::string())));
  }
  counters_->requests.Add({{"command", label}, {"code", std::to_string(reply.status)}}).Increment();
  // Plugin names, paths and dlerror() text need not be UTF-8; a reply must not fail on them.
  return {reply.status, reply.body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

}  // namespace troupe
