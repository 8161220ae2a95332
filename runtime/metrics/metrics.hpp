#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace prometheus {
class Registry;
}

namespace troupe {

/// The process's metric registry (prometheus-cpp) and the runtime's own metric families. Every
/// metric troupe exports is listed in monitoring/METRICS.md.
class metrics_registry {
 public:
  metrics_registry();
  ~metrics_registry();
  metrics_registry(const metrics_registry&) = delete;
  metrics_registry& operator=(const metrics_registry&) = delete;

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // Runtime metrics: actors by role, messages by type. Thread-safe.
  void actor_spawned(std::string_view role);
  void actor_exited(std::string_view role);
  void message_sent(std::string_view type);
  void message_received(std::string_view type);

  // Inference: tokens generated, and MTP speculative decoding's drafts verified and kept (the
  // acceptance rate is their ratio). Thread-safe.
  void tokens_generated(std::int64_t count);
  void speculative_drafts(std::int64_t drafted, std::int64_t accepted);

  /// Current values, for tests and summaries.
  double actors_alive(std::string_view role) const;
  double tokens_generated_total() const;
  double speculative_drafted_total() const;
  double speculative_accepted_total() const;
  double actors_spawned_total(std::string_view role) const;
  double messages_sent_total(std::string_view type) const;
  double messages_received_total(std::string_view type) const;

 private:
  struct families;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<families> families_;
};

/// An HTTP endpoint serving the registry at /metrics for Prometheus to scrape.
class metrics_endpoint {
 public:
  /// Binds host:port (port 0: a free port). Throws troupe::error with a clear cause when the port
  /// is in use or the address cannot be bound.
  metrics_endpoint(const std::string& host, int port, const metrics_registry& metrics);
  ~metrics_endpoint();
  metrics_endpoint(const metrics_endpoint&) = delete;
  metrics_endpoint& operator=(const metrics_endpoint&) = delete;

  /// The port actually bound.
  int port() const { return port_; }
  /// "http://host:port/metrics".
  std::string url() const;

 private:
  struct exposer_holder;
  std::unique_ptr<exposer_holder> exposer_;
  std::string host_;
  int port_ = 0;
};

}  // namespace troupe
