// Monitoring end to end with the real Prometheus server: a short training job serves its
// metrics on a free loopback port, Prometheus runs with the shipped configuration (only the
// targets file points it at the job), and its HTTP API must show every layer x expert series,
// summing to the tokens routed. promtool checks the shipped configuration and rules, runs their
// unit tests, and lints a live scrape. Every metric the Grafana dashboard and the alert rules
// query is one troupe exports and monitoring/METRICS.md documents.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"
#include "tests/support/controlled_job.hpp"
#include "tests/support/free_port.hpp"
#include "tests/support/markdown.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::background_command;
using troupe::testing::run_command;
using troupe::testing::run_result;

fs::path source(const std::string& relative) {
  return fs::path(std::getenv("TROUPE_SOURCE_DIR")) / relative;
}
fs::path build(const std::string& relative) {
  return fs::path(std::getenv("TROUPE_BUILD_DIR")) / relative;
}
std::string read_file(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), {}};
}

bool have_prometheus() {
  return run_command("command -v prometheus && command -v promtool").exit_code == 0;
}

/// A job that pauses after step 3 of 4, with its metrics endpoint.
troupe::testing::controlled_job start_job(const std::string& name, const std::string& extra) {
  const fs::path dir = troupe::testing::scratch_dir("monitoring", name);
  return {dir, name,
          fmt::format("--steps 4 --pause-after 3 --threads 2 --quiet --log-json {} "
                      "--checkpoint-dir {} {}",
                      (dir / "steps.jsonl").string(), (dir / "checkpoints").string(), extra)};
}

std::string metrics_url(const troupe::testing::controlled_job& job) {
  return job.status().at("metrics_url");
}

std::string scrape_metrics(const troupe::testing::controlled_job& job) {
  return run_command("curl -s " + metrics_url(job)).output;
}

/// Metric families in an exposition: name -> type.
std::map<std::string, std::string> families(const std::string& exposition) {
  std::map<std::string, std::string> out;
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("# TYPE ")) continue;
    std::istringstream words(line.substr(7));
    std::string name, type;
    words >> name >> type;
    out[name] = type;
  }
  return out;
}

/// Series of `metric` in an exposition (lines starting with the name and a label set or space).
int series_count(const std::string& exposition, const std::string& metric) {
  int count = 0;
  std::istringstream lines(exposition);
  for (std::string line; std::getline(lines, line);)
    if (line.starts_with(metric + "{") || line.starts_with(metric + " ")) ++count;
  return count;
}

/// Every troupe_ name in `text`.
std::set<std::string> referenced_metrics(const std::string& text) {
  std::set<std::string> names;
  const std::regex name(R"(troupe_[a-z0-9_]+)");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), name); it != std::sregex_iterator();
       ++it)
    names.insert(it->str());
  return names;
}

std::set<std::string> documented_metrics() {
  std::set<std::string> names;
  std::ifstream in(source("monitoring/METRICS.md"));
  for (std::string line; std::getline(in, line);)
    if (auto key = troupe::testing::table_key(line); key && key->starts_with("troupe_"))
      names.insert(*key);
  return names;
}

/// GET on Prometheus's HTTP API; the "data" of a success, or null.
nlohmann::json prometheus_api(int port, const std::string& path) {
  const run_result r = run_command(fmt::format("curl -s -G 'http://127.0.0.1:{}{}'", port, path));
  const auto reply = nlohmann::json::parse(r.output, nullptr, false);
  if (reply.is_discarded() || reply.value("status", std::string()) != "success") return nullptr;
  return reply.at("data");
}

nlohmann::json query(int port, const std::string& promql) {
  std::string encoded;
  for (unsigned char c : promql) {
    if (std::isalnum(c) || c == '_')
      encoded += static_cast<char>(c);
    else
      encoded += fmt::format("%{:02X}", c);
  }
  const auto data = prometheus_api(port, "/api/v1/query?query=" + encoded);
  return data.is_null() ? nlohmann::json::array() : data.at("result");
}

TEST(Monitoring, ShippedPrometheusFilesPassPromtool) {
  if (!have_prometheus())
    GTEST_SKIP() << "prometheus/promtool not installed (tools/setup installs them)";
  for (const std::string& command :
       {"promtool check config " + source("monitoring/prometheus/prometheus.yml").string(),
        "promtool check rules " + source("monitoring/prometheus/rules/troupe-alerts.yml").string(),
        "promtool test rules " +
            source("monitoring/prometheus/tests/troupe-alerts-test.yml").string()}) {
    const run_result r = run_command(command);
    EXPECT_EQ(r.exit_code, 0) << command << "\n" << r.output;
  }
}

TEST(Monitoring, PrometheusScrapesEveryLayerTimesExpertSeriesSummingToTheTokensRouted) {
  if (!have_prometheus())
    GTEST_SKIP() << "prometheus/promtool not installed (tools/setup installs them)";
  auto job = start_job("scraped", "");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  // A swap that works and one that fails, so the swap metrics have series too.
  EXPECT_EQ(job.ctl("swap --plugin moe --library " + build("plugins/moe/libtroupe-moe.so").string())
                .exit_code,
            0);
  EXPECT_EQ(job.ctl("swap --plugin moe --library /nonexistent/libtroupe-moe.so").exit_code, 1);
  const std::string url = metrics_url(job);
  const std::string host_port = url.substr(7, url.find("/metrics") - 7);

  // promtool lints a live scrape.
  const std::string scrape = scrape_metrics(job);
  std::ofstream(job.dir() / "scrape.txt") << scrape;
  const run_result lint =
      run_command("promtool check metrics < " + (job.dir() / "scrape.txt").string());
  EXPECT_EQ(lint.exit_code, 0) << lint.output;

  // The dashboard and the rules query only what troupe exports and documents.
  const auto exported = families(scrape);
  const auto documented = documented_metrics();
  std::set<std::string> queried;
  for (const fs::path& file : {source("monitoring/grafana/dashboards/troupe.json"),
                               source("monitoring/prometheus/rules/troupe-alerts.yml")})
    for (const auto& name : referenced_metrics(read_file(file))) queried.insert(name);
  EXPECT_GT(queried.size(), 15u);
  for (std::string name : queried) {
    for (const std::string suffix : {"_bucket", "_sum", "_count"})
      if (name.ends_with(suffix) && exported.count(name.substr(0, name.size() - suffix.size())))
        name = name.substr(0, name.size() - suffix.size());
    EXPECT_TRUE(exported.count(name)) << name << " is queried but not exported";
    EXPECT_TRUE(documented.count(name)) << name << " is queried but not in METRICS.md";
  }

  // Prometheus with the shipped configuration; only the targets file is this test's.
  const fs::path config = job.dir() / "prometheus";
  fs::create_directories(config / "targets");
  fs::copy_file(source("monitoring/prometheus/prometheus.yml"), config / "prometheus.yml");
  fs::copy(source("monitoring/prometheus/rules"), config / "rules");
  std::ofstream(config / "targets" / "troupe.json")
      << nlohmann::json::array({{{"targets", {host_port}}}}).dump();
  const run_result check =
      run_command("promtool check config " + (config / "prometheus.yml").string());
  EXPECT_EQ(check.exit_code, 0) << check.output;
  // Prometheus cannot report the port it bound, so it gets a free one.
  const int port = troupe::test::free_tcp_port();
  background_command prometheus(
      fmt::format("prometheus --config.file={} --storage.tsdb.path={} "
                  "--web.listen-address=127.0.0.1:{}",
                  (config / "prometheus.yml").string(), (job.dir() / "tsdb").string(), port),
      job.dir() / "prometheus.log");
  // The first scrape lands within a scrape interval (5 s) of discovery.
  ASSERT_TRUE(troupe::testing::eventually(60, [&] {
    return !query(port, "troupe_train_steps_total").empty();
  })) << read_file(job.dir() / "prometheus.log");

  const auto routed = query(port, "troupe_expert_tokens_routed_total");
  std::map<std::string, std::set<std::string>> experts;  // layer -> experts
  std::map<std::string, double> sums;
  for (const auto& series : routed) {
    const std::string layer = series.at("metric").at("layer");
    experts[layer].insert(series.at("metric").at("expert").get<std::string>());
    sums[layer] += std::stod(series.at("value")[1].get<std::string>());
  }
  // tiny: layers 1-3 are MoE, layer 4 is the MTP block's; 16 routed experts each.
  ASSERT_EQ(experts.size(), 4u) << routed.dump();
  for (const auto& [layer, ids] : experts) EXPECT_EQ(ids.size(), 16u) << "layer " << layer;

  double tokens = 0;
  for (const auto& record : troupe::testing::read_json_lines(job.dir() / "steps.jsonl"))
    tokens += record.at("tokens").get<double>();
  const auto config_json =
      nlohmann::json::parse(std::ifstream(source("topologies/models/tiny/config.json")));
  const double per_token = config_json.at("num_experts_per_tok");
  ASSERT_GT(tokens, 0);
  for (const auto& series : query(port, "troupe_layer_tokens_routed_total")) {
    const std::string layer = series.at("metric").at("layer");
    const double total = std::stod(series.at("value")[1].get<std::string>());
    EXPECT_EQ(total, tokens * per_token) << "layer " << layer;
    EXPECT_EQ(sums[layer], total) << "layer " << layer << ": experts do not sum to the layer";
  }
  const auto swaps = query(port, "troupe_plugin_swaps_total");
  EXPECT_EQ(swaps.size(), 2u) << swaps.dump();  // moe swapped, moe failed

  // The rules loaded and evaluate without errors.
  ASSERT_TRUE(troupe::testing::eventually(20, [&] {
    const auto rules = prometheus_api(port, "/api/v1/rules");
    if (rules.is_null() || rules.at("groups").empty()) return false;
    for (const auto& rule : rules.at("groups")[0].at("rules"))
      if (rule.value("health", std::string()) != "ok") return false;
    return true;
  })) << prometheus_api(port, "/api/v1/rules").dump();

  EXPECT_EQ(job.finish(), 0) << job.log();
}

TEST(Monitoring, PerLayerAggregatesOnlyForModelsWithManyExperts) {
  auto job = start_job("aggregates", "--set monitoring.per_expert_series=false");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  const std::string scrape = scrape_metrics(job);
  EXPECT_EQ(series_count(scrape, "troupe_expert_tokens_routed_total"), 0);
  EXPECT_EQ(series_count(scrape, "troupe_router_bias"), 0);
  EXPECT_EQ(series_count(scrape, "troupe_layer_tokens_routed_total"), 4);
  EXPECT_EQ(series_count(scrape, "troupe_expert_load_max_over_mean"), 4);
  EXPECT_EQ(job.finish(), 0) << job.log();
}

}  // namespace
