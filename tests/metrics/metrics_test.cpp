// The metrics endpoint: started from a topology's [monitoring] section on a free loopback port,
// scraped over HTTP, every exported name in monitoring/METRICS.md, and clear errors for a port
// already in use or an address that cannot be bound.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/metrics/metrics.hpp"
#include "runtime/topology/load.hpp"
#include "tests/support/markdown.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct ping_request {
  TROUPE_REQUEST("test.ping", bool);
  auto fields() { return std::tie(); }
};

fs::path source_dir() {
  const char* dir = std::getenv("TROUPE_SOURCE_DIR");
  return dir != nullptr ? fs::path(dir) : fs::current_path();
}

/// GET http://127.0.0.1:port/path; returns the whole response ("" on connection failure).
std::string http_get(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "";
  }
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;)
    response.append(buffer, static_cast<std::size_t>(n));
  close(fd);
  return response;
}

/// Names of the metric families in an exposition ("# TYPE name type" lines).
std::set<std::string> exported_names(const std::string& exposition) {
  std::set<std::string> names;
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("# TYPE ")) continue;
    names.insert(line.substr(7, line.find(' ', 7) - 7));
  }
  return names;
}

/// Metric names listed in monitoring/METRICS.md, and those under "## Runtime".
std::pair<std::set<std::string>, std::set<std::string>> catalogue() {
  std::ifstream in(source_dir() / "monitoring/METRICS.md");
  std::set<std::string> all, runtime;
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.starts_with("## ")) section = line.substr(3);
    if (auto key = troupe::testing::table_key(line); key && key->starts_with("troupe_")) {
      all.insert(*key);
      if (section == "Runtime") runtime.insert(*key);
    }
  }
  return {all, runtime};
}

TEST(MetricsEndpoint, StartsFromTheTopologyAndServesRuntimeMetrics) {
  troupe::topology_load_options options;
  options.resolve_plugins = false;
  auto loaded = troupe::load_topology(source_dir() / "topologies/tiny.toml", options);
  const auto& monitoring = loaded.topo.monitoring;
  ASSERT_EQ(monitoring.metrics_host, "127.0.0.1");
  ASSERT_EQ(monitoring.metrics_port, 0);

  auto metrics = std::make_shared<troupe::metrics_registry>();
  troupe::metrics_endpoint endpoint(monitoring.metrics_host, monitoring.metrics_port, *metrics);
  ASSERT_GT(endpoint.port(), 0) << "port 0 must be replaced by the port actually bound";
  EXPECT_EQ(endpoint.url(), "http://127.0.0.1:" + std::to_string(endpoint.port()) + "/metrics");

  {
    troupe::actor_runtime runtime({2, false}, metrics);
    auto stage = runtime.spawn("stage", [](troupe::event_actor&) {
      return troupe::behavior().on<ping_request>([](ping_request&) { return true; });
    });
    troupe::scoped_actor self(runtime);
    EXPECT_TRUE(self.ask(stage, ping_request{}, "ping", std::chrono::seconds(5)));
    const std::string scrape = http_get(endpoint.port(), "/metrics");
    ASSERT_NE(scrape.find("200 OK"), std::string::npos) << scrape;
    EXPECT_NE(scrape.find("troupe_actors_spawned_total{role=\"stage\"} 1"), std::string::npos)
        << scrape;
    EXPECT_NE(scrape.find("troupe_actors_alive{role=\"stage\"} 1"), std::string::npos) << scrape;
    EXPECT_NE(scrape.find("troupe_messages_sent_total{type=\"test.ping\"} 1"), std::string::npos)
        << scrape;
    EXPECT_NE(scrape.find("troupe_messages_received_total{type=\"test.ping\"} 1"),
              std::string::npos)
        << scrape;
    EXPECT_NE(scrape.find("troupe_build_info{"), std::string::npos) << scrape;

    const auto [listed, runtime_listed] = catalogue();
    ASSERT_FALSE(runtime_listed.empty()) << "monitoring/METRICS.md lists no runtime metrics";
    const auto exported = exported_names(scrape);
    for (const auto& name : exported) {
      if (name.starts_with("troupe_")) {
        EXPECT_TRUE(listed.count(name)) << name << " is exported but not in METRICS.md";
      }
    }
    for (const auto& name : runtime_listed)
      EXPECT_TRUE(exported.count(name)) << name << " is in METRICS.md but not exported";
    runtime.stop(stage);
  }
  const std::string after = http_get(endpoint.port(), "/metrics");
  EXPECT_NE(after.find("troupe_actors_alive{role=\"stage\"} 0"), std::string::npos) << after;
}

TEST(MetricsEndpoint, APortInUseIsAClearError) {
  troupe::metrics_registry metrics;
  troupe::metrics_endpoint first("127.0.0.1", 0, metrics);
  try {
    troupe::metrics_endpoint second("127.0.0.1", first.port(), metrics);
    FAIL() << "binding a port in use must fail";
  } catch (const troupe::error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("127.0.0.1:" + std::to_string(first.port())), std::string::npos)
        << message;
    EXPECT_NE(message.find("already in use"), std::string::npos) << message;
  }
  EXPECT_FALSE(http_get(first.port(), "/metrics").empty()) << "the first endpoint keeps serving";
}

TEST(MetricsEndpoint, BadAddressesAreClearErrors) {
  troupe::metrics_registry metrics;
  try {
    troupe::metrics_endpoint endpoint("not-an-address", 0, metrics);
    FAIL();
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("not an IPv4 address"), std::string::npos) << e.what();
  }
  EXPECT_THROW(troupe::metrics_endpoint("127.0.0.1", 70000, metrics), troupe::error);
  EXPECT_THROW(troupe::metrics_endpoint("203.0.113.7", 0, metrics),
               troupe::error);  // not an address of ours
}

}  // namespace
