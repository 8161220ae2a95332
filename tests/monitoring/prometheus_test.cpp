// Monitoring end to end with the real Prometheus server: a short training job serves its
// metrics on a free loopback port, Prometheus runs with the shipped configuration (only the
// targets file points it at the job), and its HTTP API must show every layer x expert series,
// summing to the tokens routed. promtool checks the shipped configuration and rules, runs their
// unit tests, and lints a live scrape. Every metric the Grafana dashboard and the alert rules
// query is one troupe exports and monitoring/METRICS.md documents: the dashboard's Serving row
// against a live scrape of `troupe serve` after a few completions, the rest against the training
// job's. The dashboard's queries parse as PromQL and its panels do not overlap.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

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
using json = nlohmann::json;

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

/// The metrics METRICS.md documents; only those of its section "## `section`" if one is named.
std::set<std::string> documented_metrics(const std::string& section = "") {
  std::set<std::string> names;
  std::ifstream in(source("monitoring/METRICS.md"));
  bool inside = section.empty();
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("## ") && !section.empty()) inside = line == "## " + section;
    if (auto key = troupe::testing::table_key(line); inside && key && key->starts_with("troupe_"))
      names.insert(*key);
  }
  return names;
}

json dashboard() {
  return json::parse(read_file(source("monitoring/grafana/dashboards/troupe.json")));
}

/// The panels of the dashboard's row `title` (those after the row panel up to the next row, and
/// those a collapsed row holds), or, with `inside` false, the dashboard without that row.
json row_panels(const json& board, const std::string& title, bool inside = true) {
  json panels = json::array();
  bool in_row = false;
  for (const json& panel : board.at("panels")) {
    if (panel.value("type", "") == "row") in_row = panel.value("title", "") == title;
    if (in_row != inside) continue;
    if (panel.value("type", "") != "row")
      panels.push_back(panel);
    else
      for (const json& held : panel.value("panels", json::array())) panels.push_back(held);
  }
  return panels;
}
json without_row(json board, const std::string& title) {
  board["panels"] = row_panels(board, title, false);
  return board;
}

/// Every troupe_ metric `text` queries must be in the exposition `scrape` (a histogram's _bucket,
/// _sum and _count as its family) and in METRICS.md; returns them.
std::set<std::string> expect_exported_and_documented(const std::string& text,
                                                     const std::string& scrape) {
  const auto exported = families(scrape);
  const auto documented = documented_metrics();
  std::set<std::string> queried;
  for (std::string name : referenced_metrics(text)) {
    for (const std::string suffix : {"_bucket", "_sum", "_count"})
      if (name.ends_with(suffix) && exported.count(name.substr(0, name.size() - suffix.size())))
        name = name.substr(0, name.size() - suffix.size());
    EXPECT_TRUE(exported.count(name)) << name << " is queried but not exported";
    EXPECT_TRUE(documented.count(name)) << name << " is queried but not in METRICS.md";
    queried.insert(name);
  }
  return queried;
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
  // And a rebalance, for the expert placement panels.
  EXPECT_EQ(job.ctl("rebalance").exit_code, 0);
  const std::string url = metrics_url(job);
  const std::string host_port = url.substr(7, url.find("/metrics") - 7);

  // promtool lints a live scrape.
  const std::string scrape = scrape_metrics(job);
  std::ofstream(job.dir() / "scrape.txt") << scrape;
  const run_result lint =
      run_command("promtool check metrics < " + (job.dir() / "scrape.txt").string());
  EXPECT_EQ(lint.exit_code, 0) << lint.output;

  // The dashboard (but its Serving row: ServingPanelsQueryWhatTroupeServeExports) and the rules
  // query only what troupe exports and documents.
  const auto queried = expect_exported_and_documented(
      without_row(dashboard(), "Serving").dump() +
          read_file(source("monitoring/prometheus/rules/troupe-alerts.yml")),
      scrape);
  EXPECT_GT(queried.size(), 15u);

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

TEST(Monitoring, ServingPanelsQueryWhatTroupeServeExports) {
  // A checkpoint of the tiny model after one step, served on a free loopback port.
  const fs::path dir = troupe::testing::scratch_dir("monitoring", "serving");
  const std::string troupe = troupe::testing::troupe_exe();
  const run_result trained = run_command(
      fmt::format("{} train {} --steps 1 --checkpoint-dir {} --set train.micro_batch_size=2 "
                  "--set train.sequence_length=32 --threads 2",
                  troupe, source("topologies/tiny.toml").string(), (dir / "checkpoints").string()));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  background_command server(
      fmt::format("{} serve --model {} --listen 127.0.0.1:0 --threads 2 --kv-cache-mib 16 "
                  "--cache-dtype f32 --expert-shards 2 --redundant-experts 2 "
                  "--rebalance-interval 0.000001",
                  troupe, (dir / "checkpoints" / "step-000001").string()),
      dir / "serve.log");
  // Its first line: "troupe serve: serving NAME at http://127.0.0.1:PORT (...".
  const std::string serving = "troupe serve: serving ";
  std::string name, url;
  troupe::testing::eventually(60, [&] {
    const std::string log = read_file(dir / "serve.log");
    const auto begin = log.find(serving);
    const auto end = log.find('\n', begin);
    if (begin == std::string::npos || end == std::string::npos) return server.exited();
    std::istringstream words(log.substr(begin + serving.size(), end - begin - serving.size()));
    std::string at;
    words >> name >> at >> url;
    return true;
  });
  ASSERT_THAT(url, ::testing::StartsWith("http://127.0.0.1:")) << read_file(dir / "serve.log");
  EXPECT_EQ(name, "step-000001");

  // Two completions, and one for a model it does not serve (404: outcome "invalid").
  const auto post = [&](const std::string& model, const std::string& curl_options) {
    return run_command(fmt::format(
        "curl -s --max-time 60 {} -H 'Content-Type: application/json' -d "
        "'{{\"model\":\"{}\",\"prompt\":\"hello\",\"max_tokens\":4}}' {}/v1/completions",
        curl_options, model, url));
  };
  for (int i = 0; i < 2; ++i) {
    const run_result r = post("step-000001", "");
    const json reply = json::parse(r.output, nullptr, false);
    ASSERT_TRUE(reply.is_object()) << r.output;
    EXPECT_EQ(reply.value("choices", json::array()).size(), 1u) << r.output;
  }
  EXPECT_EQ(post("nonexistent", "-o /dev/null -w '%{http_code}'").output, "404");

  const std::string scrape = run_command("curl -s --max-time 30 " + url + "/metrics").output;
  EXPECT_THAT(scrape,
              HasSubstr("troupe_serve_requests_total{endpoint=\"completions\",outcome=\"ok\"} 2"));
  EXPECT_THAT(scrape, HasSubstr("troupe_serve_requests_total{endpoint=\"completions\",outcome="
                                "\"invalid\"} 1"));
  EXPECT_THAT(scrape, HasSubstr("troupe_serve_time_to_first_token_seconds_count 2"));
  if (have_prometheus()) {
    std::ofstream(dir / "scrape.txt") << scrape;
    const run_result lint =
        run_command("promtool check metrics < " + (dir / "scrape.txt").string());
    EXPECT_EQ(lint.exit_code, 0) << lint.output;
  }

  // The Serving row queries only what troupe serve exports and METRICS.md documents, and every
  // serving and inference metric has a panel.
  const json panels = row_panels(dashboard(), "Serving");
  EXPECT_GE(panels.size(), 8u);
  const auto queried = expect_exported_and_documented(panels.dump(), scrape);
  for (const std::string section : {"Serving", "Inference"})
    for (const std::string& metric : documented_metrics(section))
      EXPECT_TRUE(queried.count(metric)) << metric << " has no panel in the Serving row";

  ::kill(server.pid(), SIGTERM);
  EXPECT_EQ(server.wait(), 0) << read_file(dir / "serve.log");
}

TEST(Monitoring, DashboardQueriesParseAndPanelsDoNotOverlap) {
  const json board = dashboard();
  const json datasource = {{"type", "prometheus"}, {"uid", "troupe-prometheus"}};
  std::set<int> ids;
  std::vector<std::pair<std::string, json>> placed;  // title, gridPos
  std::string rules = "groups:\n  - name: dashboard\n    rules:\n";
  const std::regex variable(R"(\$[a-z_]+)");
  const auto record = [&](const std::string& name, const std::string& expr) {
    rules += fmt::format("      - record: {}\n        expr: {}\n", name,
                         json(std::regex_replace(expr, variable, ".*")).dump());
  };
  for (const json& panel : board.at("panels")) {
    const std::string title = panel.value("title", "");
    EXPECT_TRUE(ids.insert(panel.at("id").get<int>()).second) << "id of " << title;
    const json& grid = panel.at("gridPos");
    const int x = grid.at("x"), y = grid.at("y"), w = grid.at("w"), h = grid.at("h");
    EXPECT_LE(x + w, 24) << title;
    for (const auto& [other, at] : placed) {
      const int ox = at.at("x"), oy = at.at("y"), ow = at.at("w"), oh = at.at("h");
      EXPECT_FALSE(x < ox + ow && ox < x + w && y < oy + oh && oy < y + h)
          << title << " overlaps " << other;
    }
    placed.emplace_back(title, grid);
    if (panel.at("type") == "row") continue;
    EXPECT_EQ(panel.at("datasource"), datasource) << title;
    if (panel.at("type") == "timeseries") {
      EXPECT_TRUE(panel.at("fieldConfig").at("defaults").contains("unit")) << title;
    }
    for (const json& target : panel.at("targets")) {
      EXPECT_EQ(target.at("datasource"), datasource) << title;
      const std::string expr = target.at("expr");
      EXPECT_THAT(expr, HasSubstr(R"(instance=~"$instance")")) << title;
      record(fmt::format("panel_{}_{}", panel.at("id").get<int>(),
                         target.at("refId").get<std::string>()),
             expr);
    }
  }
  for (const json& annotation : board.at("annotations").at("list"))
    if (annotation.contains("expr")) record("annotation", annotation.at("expr"));
  if (!have_prometheus())
    GTEST_SKIP() << "prometheus/promtool not installed (tools/setup installs them)";
  const fs::path file = troupe::testing::scratch_dir("monitoring", "dashboard") / "queries.yml";
  std::ofstream(file) << rules;
  const run_result check = run_command("promtool check rules " + file.string());
  EXPECT_EQ(check.exit_code, 0) << check.output << rules;
}

TEST(Monitoring, PerLayerAggregatesOnlyForModelsWithManyExperts) {
  auto job = start_job("aggregates", "--set monitoring.per_expert_series=false");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  const std::string scrape = scrape_metrics(job);
  EXPECT_EQ(series_count(scrape, "troupe_expert_tokens_routed_total"), 0);
  EXPECT_EQ(series_count(scrape, "troupe_router_bias"), 0);
  EXPECT_EQ(series_count(scrape, "troupe_expert_shard"), 0);
  EXPECT_EQ(series_count(scrape, "troupe_layer_tokens_routed_total"), 4);
  EXPECT_EQ(series_count(scrape, "troupe_expert_shard_load_max_over_mean"), 4);
  EXPECT_EQ(series_count(scrape, "troupe_expert_load_max_over_mean"), 4);
  EXPECT_EQ(job.finish(), 0) << job.log();
}

}  // namespace
