#include "runtime/metrics/metrics.hpp"
#include "runtime/metrics/gpu_memory.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include "runtime/core/error.hpp"
#include "runtime/plugin/registry.hpp"
#include "troupe_build_config.h"

namespace troupe {

struct metrics_registry::families {
  prometheus::Family<prometheus::Counter>& spawned;
  prometheus::Family<prometheus::Gauge>& alive;
  prometheus::Family<prometheus::Counter>& sent;
  prometheus::Family<prometheus::Counter>& received;
  prometheus::Family<prometheus::Gauge>& build_info;
};

metrics_registry::metrics_registry() : registry_(std::make_shared<prometheus::Registry>()) {
  families_ = std::make_unique<families>(families{
      prometheus::BuildCounter()
          .Name("troupe_actors_spawned_total")
          .Help("Actors spawned, by role")
          .Register(*registry_),
      prometheus::BuildGauge()
          .Name("troupe_actors_alive")
          .Help("Actors currently alive, by role")
          .Register(*registry_),
      prometheus::BuildCounter()
          .Name("troupe_messages_sent_total")
          .Help("Actor messages sent through troupe's send, by message type")
          .Register(*registry_),
      prometheus::BuildCounter()
          .Name("troupe_messages_received_total")
          .Help("Actor messages received by troupe actors, by message type")
          .Register(*registry_),
      prometheus::BuildGauge()
          .Name("troupe_build_info")
          .Help("Constant 1, labelled with the build")
          .Register(*registry_),
  });
  families_->build_info.Add({{"version", TROUPE_VERSION}, {"plugin_abi", host_abi_version()}})
      .Set(1);
}

metrics_registry::~metrics_registry() = default;

void metrics_registry::actor_spawned(std::string_view role) {
  families_->spawned.Add({{"role", std::string(role)}}).Increment();
  families_->alive.Add({{"role", std::string(role)}}).Increment();
}

void metrics_registry::actor_exited(std::string_view role) {
  families_->alive.Add({{"role", std::string(role)}}).Decrement();
}

void metrics_registry::message_sent(std::string_view type) {
  families_->sent.Add({{"type", std::string(type)}}).Increment();
}

void metrics_registry::message_received(std::string_view type) {
  families_->received.Add({{"type", std::string(type)}}).Increment();
}

double metrics_registry::actors_alive(std::string_view role) const {
  return families_->alive.Add({{"role", std::string(role)}}).Value();
}
double metrics_registry::actors_spawned_total(std::string_view role) const {
  return families_->spawned.Add({{"role", std::string(role)}}).Value();
}
double metrics_registry::messages_sent_total(std::string_view type) const {
  return families_->sent.Add({{"type", std::string(type)}}).Value();
}
double metrics_registry::messages_received_total(std::string_view type) const {
  return families_->received.Add({{"type", std::string(type)}}).Value();
}

struct metrics_endpoint::exposer_holder {
  explicit exposer_holder(const std::string& address) : exposer(address, 2) {}
  prometheus::Exposer exposer;  // two civetweb threads: scrapes are rare and small
};

namespace {

/// Why host:port cannot be bound, found by trying (civetweb only says that binding failed).
std::string bind_diagnosis(const std::string& host, int port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1)
    return fmt::format("'{}' is not an IPv4 address (use e.g. 127.0.0.1 or 0.0.0.0)", host);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return std::strerror(errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  std::string cause = "the HTTP server could not start";
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0)
    cause =
        errno == EADDRINUSE
            ? std::string("the port is already in use; choose another port, or 0 for a free one")
            : std::string(std::strerror(errno));
  close(fd);
  return cause;
}

}  // namespace

metrics_endpoint::metrics_endpoint(const std::string& host, int port,
                                   const metrics_registry& metrics)
    : host_(host) {
  if (port < 0 || port > 65535)
    fail("metrics endpoint {}:{}: the port must be 0 to 65535", host, port);
  // civetweb binds "host:port" and numeric IPv4 only; check the host first for a clear error.
  in_addr parsed{};
  if (inet_pton(AF_INET, host.c_str(), &parsed) != 1)
    fail("metrics endpoint {}:{}: {}", host, port, bind_diagnosis(host, port));
  try {
    exposer_ = std::make_unique<exposer_holder>(fmt::format("{}:{}", host, port));
  } catch (const std::exception&) {
    fail("metrics endpoint {}:{}: {}", host, port, bind_diagnosis(host, port));
  }
  exposer_->exposer.RegisterCollectable(metrics.registry());
  exposer_->exposer.RegisterCollectable(gpu_memory_collectable());
  const auto ports = exposer_->exposer.GetListeningPorts();
  port_ = ports.empty() ? port : ports.front();
  spdlog::info("metrics: serving {}", url());
}

metrics_endpoint::~metrics_endpoint() = default;

std::string metrics_endpoint::url() const {
  return fmt::format("http://{}:{}/metrics", host_, port_);
}

}  // namespace troupe
