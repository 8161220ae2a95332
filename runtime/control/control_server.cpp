#include "runtime/control/control_server.hpp"

#include <optional>
#include <stdexcept>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <fmt/format.h>

#include "runtime/control/http_server.hpp"

namespace troupe {

namespace {

/// The command a target names: "/v1/pause?x=1" -> "pause"; "" when it is not under /v1/.
std::string command_of(const std::string& target) {
  const std::string prefix = "/v1/";
  std::string command = target.rfind(prefix, 0) == 0 ? target.substr(prefix.size()) : std::string();
  if (const auto query = command.find('?'); query != std::string::npos) command.resize(query);
  return command;
}

/// Where the first string of `body` (a key or a value) holding a NUL is, as a JSON pointer
/// without its leading '/' ("library", "options/0"); nothing when no string does.
std::optional<std::string> nul_field(const nlohmann::json& body) {
  // NOTES: a walk with a stack of its own: a body of 1 MiB may nest half a million deep, too
  // deep for recursion on a thread's stack.
  struct frame {
    const nlohmann::json* container;
    nlohmann::json::const_iterator next;
    std::size_t index = 0;
    std::string step;  // the key or index of the element being looked at
  };
  const auto has_nul = [](const std::string& text) { return text.find('\0') != std::string::npos; };
  std::vector<frame> stack;
  const auto path = [&stack] {
    std::string at;
    for (const auto& f : stack) at += (at.empty() ? "" : "/") + f.step;
    for (std::size_t nul; (nul = at.find('\0')) != std::string::npos;)
      at.replace(nul, 1, "\\u0000");
    return at;
  };
  if (body.is_structured()) stack.push_back({&body, body.begin(), 0, {}});
  while (!stack.empty()) {
    frame& top = stack.back();
    if (top.next == top.container->end()) {
      stack.pop_back();
      continue;
    }
    const auto item = top.next++;
    top.step = top.container->is_object() ? item.key() : std::to_string(top.index++);
    if (has_nul(top.step) || (item->is_string() && has_nul(item->get_ref<const std::string&>())))
      return path();
    if (item->is_structured())
      stack.push_back({&*item, item->begin(), 0, {}});  // `top` dangles now
  }
  return std::nullopt;
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
                               std::function<void(const std::string&)> log,
                               const http_limits& limits)
    : token_(std::move(token)), commands_(std::move(commands)), log_(std::move(log)) {
  counters_ = std::make_unique<counters>(counters{
      prometheus::BuildCounter()
          .Name("troupe_control_requests_total")
          .Help("Requests to the job's control endpoint, by command and HTTP status")
          .Register(metrics),
  });
  server_ = std::make_unique<http_server>(
      host, port, [this](const http_request& request) { return handle(request); }, limits,
      [this](const http_request& request) { return screen(request); });
}

control_server::~control_server() = default;

std::string control_server::url() const {
  return server_->url();
}

std::optional<http_reply> control_server::screen(const http_request& request) {
  const std::string command = command_of(request.target);
  const auto it = commands_.find(command);
  const std::string label = it == commands_.end() ? std::string("unknown") : command;
  if (!same_secret(request.authorization, "Bearer " + token_)) {
    log_(fmt::format("control: refused {} {} from {}: {}", request.method, request.target,
                     request.peer, request.authorization.empty() ? "no token" : "wrong token"));
    return finish(label, control_error(401,
                                       "missing or wrong token (Authorization: Bearer TOKEN, the "
                                       "token is in the job's token file)"));
  }
  if (it == commands_.end()) {
    std::string known;
    for (const auto& [name, fn] : commands_) known += (known.empty() ? "" : ", ") + name;
    return finish(label, control_error(404, fmt::format("no command at {}; the commands are "
                                                        "/v1/{{{}}}",
                                                        request.target, known)));
  }
  const char* method = command == "status" ? "GET" : "POST";
  if (request.method != method)
    return finish(label, control_error(405, fmt::format("{} takes {}", request.target, method)));
  return std::nullopt;
}

http_reply control_server::handle(const http_request& request) {
  // The server screened the request already; again here, so that handle() stands on its own.
  if (auto refused = screen(request)) return *refused;
  const std::string command = command_of(request.target);
  control_reply reply;
  nlohmann::json body = nlohmann::json::object();
  try {
    if (!request.body.empty()) body = nlohmann::json::parse(request.body);
    if (!body.is_object()) throw std::runtime_error("the body is not a JSON object");
    if (const auto field = nul_field(body))
      throw std::runtime_error(
          fmt::format("bad request body: \"{}\" holds a NUL character (\\u0000), which a path or "
                      "name cannot hold",
                      *field));
    reply = commands_.at(command)(body);
  } catch (const nlohmann::json::exception& e) {
    reply = control_error(400, fmt::format("bad request body: {}", e.what()));
  } catch (const std::exception& e) {
    reply = control_error(400, e.what());
  }
  if (reply.status >= 400)
    log_(fmt::format("control: {} from {} failed ({}): {}", command, request.peer, reply.status,
                     reply.body.value("error", std::string())));
  return finish(command, reply);
}

http_reply control_server::finish(const std::string& label, const control_reply& reply) {
  counters_->requests.Add({{"command", label}, {"code", std::to_string(reply.status)}}).Increment();
  // Plugin names, paths and dlerror() text need not be UTF-8; a reply must not fail on them.
  return {reply.status, reply.body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
}

}  // namespace troupe
