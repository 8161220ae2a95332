// `troupe serve topologies/two-hosts.toml` as two processes on this machine ([serve]
// decode_host = "node1"): HTTP and prefill in the first, decode in the second, every prefilled
// sequence moving with its cached rows between them (UCX). Concurrent requests, greedy and
// sampled, get the completions of a server in one process, and the decode process serves its own
// metrics, and a plugin swap (`troupe ctl`) reaches it; a decode process killed with -9 fails
// the requests it held with a message naming it,
// within 10 s, and the server keeps answering; SIGTERM stops both processes.
// four-hosts.toml's decode_hosts = ["node2", "node3"]: three processes, both decode processes
// get sequences, and when one is killed the other's sequences finish and new requests go there.
// expert-hosts.toml's expert_hosts = ["node1", "node2"]: the instance's expert shards in two
// processes of their own give the one-process completions, before and after a re-placement that
// moves experts between those processes and a moe swap that reaches them; an expert process
// killed with -9 is named in the failures and in `troupe ctl` status. Decode and expert processes
// together (four-hosts.toml with node3 serving HTTP and prefilling, node2 decoding, node0 and
// node1 holding the shards): the
// completions of one process, and `troupe ctl rebalance` re-places the decode process's shards
// too.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"
#include "tests/support/served_process.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::background_command;
using troupe::testing::run_command;

std::string troupe() {
  return std::getenv("TROUPE_EXE");
}

fs::path source(const std::string& path) {
  return fs::path(std::getenv("TROUPE_SOURCE_DIR")) / path;
}

std::string read_file(const fs::path& file) {
  return troupe::testing::read_text(file);
}

std::string url_of(const fs::path& log, background_command& server) {
  return troupe::testing::served_url(log, server);
}

/// `long_running`: generate all of `max_tokens` whatever comes (ignore_eos), so the request is
/// still decoding when a test kills the process that holds it.
std::string complete(const std::string& url, int i, int max_tokens = 12,
                     bool long_running = false) {
  nlohmann::json body{{"model", "step-000001"},
                      {"prompt", fmt::format("Across processes {}: ", i)},
                      {"max_tokens", max_tokens},
                      {"temperature", i % 2 == 0 ? 0.0 : 0.8},
                      {"seed", i}};
  if (long_running) body["ignore_eos"] = true;
  return run_command(fmt::format("curl -s --max-time 60 -H 'Content-Type: application/json' -d "
                                 "'{}' {}/v1/completions",
                                 body.dump(), url))
      .output;
}

std::string text_of(const std::string& reply) {
  const auto j = nlohmann::json::parse(reply, nullptr, false);
  if (!j.is_object() || !j.contains("choices")) return "<" + reply + ">";
  return j["choices"][0].value("text", "");
}

/// troupe_generated_tokens_total at a decode process's metrics URL (-1: it does not answer).
double generated_tokens(const std::string& url) {
  const std::string text = run_command("curl -s --max-time 5 " + url).output;
  const std::string name = "\ntroupe_generated_tokens_total ";
  const auto at = text.find(name);
  return at == std::string::npos ? -1.0 : std::stod(text.substr(at + name.size()));
}

/// Waits (up to 10 s, polling) until every one of `metrics` counts more generated tokens than in
/// `before`: the requests just sent are decoding everywhere. A fixed sleep raced both ways: on a
/// loaded machine decoding had not started, on a fast one short completions had ended.
bool decoding_everywhere(const std::vector<std::string>& metrics,
                         const std::vector<double>& before) {
  return troupe::testing::eventually(
      10,
      [&] {
        for (std::size_t j = 0; j < metrics.size(); ++j)
          if (generated_tokens(metrics[j]) <= before[j]) return false;
        return true;
      },
      5);
}

/// A tiny checkpoint trained one step, and the completions of a server in one process.
class ServeProcesses : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = troupe::testing::scratch_dir("launch-test", "serve-processes");
    const auto trained = run_command(fmt::format(
        "{} train {} --steps 1 --checkpoint-dir {} --set train.micro_batch_size=2 --set "
        "train.sequence_length=32 --threads 2 --quiet",
        troupe(), source("topologies/tiny.toml").string(), (dir_ / "ck").string()));
    ASSERT_EQ(trained.exit_code, 0) << trained.output;
    // The topologies' [control] sections start control endpoints: their names go here.
    ::setenv("TROUPE_RUN_DIR", (dir_ / "run").c_str(), 1);
    common_ = fmt::format(
        "--model {} --listen 127.0.0.1:0 --threads 2 --kv-cache-mib 16 --cache-dtype f32",
        (dir_ / "ck" / "step-000001").string());
    background_command one(fmt::format("{} serve {}", troupe(), common_), dir_ / "one.log");
    const std::string url = url_of(dir_ / "one.log", one);
    ASSERT_FALSE(url.empty()) << read_file(dir_ / "one.log");
    for (int i = 0; i < 8; ++i) alone_.push_back(text_of(complete(url, i)));
    for (int i = 200; i < 204; ++i) alone_.push_back(text_of(complete(url, i)));
  }
  /// The one-process completion of request `i` (0 to 7, 200 to 203).
  static const std::string& alone(int i) {
    return alone_[static_cast<std::size_t>(i < 200 ? i : 8 + i - 200)];
  }
  /// The pid in the log's "ROLE process (rank R, ...) started, pid P".
  static pid_t decode_pid(const std::string& log, int rank, const char* role = "decode") {
    const auto at = log.find(fmt::format("{} process (rank {},", role, rank));
    const auto pid_at = log.find("started, pid ", at);
    return at == std::string::npos || pid_at == std::string::npos
               ? -1
               : std::stoi(log.substr(pid_at + 13));
  }
  /// The decode processes' metrics URLs, in the order they printed them.
  static std::vector<std::string> decode_metrics(const std::string& log) {
    std::vector<std::string> urls;
    const std::string mark = "decode process metrics at ";
    for (auto at = log.find(mark); at != std::string::npos; at = log.find(mark, at + 1))
      urls.push_back(log.substr(at + mark.size(), log.find('\n', at) - at - mark.size()));
    return urls;
  }

  static inline fs::path dir_;
  static inline std::string common_;
  static inline std::vector<std::string> alone_;
};

TEST_F(ServeProcesses, DecodeInAnotherProcessGivesTheOneProcessCompletions) {
  const fs::path& dir = dir_;
  background_command two(fmt::format("{} serve {} {}", troupe(),
                                     source("topologies/two-hosts.toml").string(), common_),
                         dir / "two.log");
  const std::string url = url_of(dir / "two.log", two);
  ASSERT_FALSE(url.empty()) << read_file(dir / "two.log");
  // The decode process prints its line after the same barrier the server passes before it serves:
  // the two processes' lines may come in either order.
  std::string log = read_file(dir / "two.log");
  for (int i = 0; i < 100 && log.find("decode instances ready") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    log = read_file(dir / "two.log");
  }
  EXPECT_THAT(log, HasSubstr("decode process (rank 1, host node1) started"));
  EXPECT_THAT(log, HasSubstr("decode process (node1): 1 decode instances ready"));
  std::vector<std::future<std::string>> replies;
  for (int i = 0; i < 8; ++i)
    replies.push_back(std::async(std::launch::async, [&url, i] { return complete(url, i); }));
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(text_of(replies[static_cast<std::size_t>(i)].get()), alone(i)) << "request " << i;

  // A plugin swap reaches the decode process too (two-hosts.toml's [control]): an identical
  // build changes no completion; a library of the wrong kind changes nothing anywhere.
  const std::string plugins = fs::path(std::getenv("TROUPE_BUILD_DIR")) / "plugins";
  const auto swapped = run_command(
      fmt::format("{} ctl step-000001 swap --json --plugin moe --library {}/moe/libtroupe-moe.so",
                  troupe(), plugins));
  ASSERT_EQ(swapped.exit_code, 0) << swapped.output << read_file(dir / "two.log");
  EXPECT_EQ(nlohmann::json::parse(swapped.output).at("processes"), 2) << swapped.output;
  const auto refused = run_command(fmt::format(
      "{} ctl step-000001 swap --plugin moe --library {}/mla/libtroupe-mla.so", troupe(), plugins));
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_THAT(refused.output, HasSubstr("a plugin of kind moe is needed here"));
  std::vector<std::future<std::string>> again;
  for (int i = 0; i < 8; ++i)
    again.push_back(std::async(std::launch::async, [&url, i] { return complete(url, i); }));
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(text_of(again[static_cast<std::size_t>(i)].get()), alone(i))
        << "after the swap, " << i;

  // The decode process serves its own metrics (two-hosts.toml's [monitoring] metrics).
  const std::string after = read_file(dir / "two.log");
  const auto metrics = decode_metrics(after);
  ASSERT_EQ(metrics.size(), 1u) << after;
  EXPECT_THAT(run_command("curl -s " + metrics.front()).output,
              ::testing::ContainsRegex("troupe_generated_tokens_total [1-9]"));

  // kill -9 the decode process while long requests decode there.
  const pid_t decode = decode_pid(log, 1);
  ASSERT_GT(decode, 0) << log;
  const double before = generated_tokens(metrics.front());
  std::vector<std::future<std::string>> held;
  for (int i = 0; i < 4; ++i)
    held.push_back(
        std::async(std::launch::async, [&url, i] { return complete(url, 100 + i, 200, true); }));
  EXPECT_TRUE(decoding_everywhere(metrics, {before})) << read_file(dir / "two.log");
  const auto killed = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(decode, SIGKILL), 0);
  int failed = 0;
  for (auto& reply : held) {
    const std::string text = reply.get();
    if (text.find("\"error\"") == std::string::npos) continue;  // it finished before the kill
    ++failed;
    EXPECT_THAT(text, HasSubstr("rank 1")) << text;
  }
  EXPECT_GT(failed, 0) << "every request finished before the kill";
  EXPECT_LT(std::chrono::steady_clock::now() - killed, std::chrono::seconds(10));
  // The server still answers: new requests fail at once with the same reason, health is served.
  EXPECT_THAT(complete(url, 110), HasSubstr("rank 1"));
  EXPECT_EQ(run_command("curl -s -o /dev/null -w '%{http_code}' " + url + "/health").output, "200");
  ::kill(two.pid(), SIGTERM);
  EXPECT_EQ(two.wait(), 0) << read_file(dir / "two.log");
}

TEST_F(ServeProcesses, TwoDecodeProcessesShareTheLoadAndOutliveEachOther) {
  // four-hosts.toml: HTTP and prefill on node0, decode on node2 (rank 1) and node3 (rank 2).
  const fs::path log_file = dir_ / "three.log";
  background_command three(fmt::format("{} serve {} {}", troupe(),
                                       source("topologies/four-hosts.toml").string(), common_),
                           log_file);
  const std::string url = url_of(log_file, three);
  ASSERT_FALSE(url.empty()) << read_file(log_file);
  const std::string log = read_file(log_file);
  EXPECT_THAT(log, HasSubstr("decode process (rank 1, host node2) started"));
  EXPECT_THAT(log, HasSubstr("decode process (rank 2, host node3) started"));
  std::vector<std::future<std::string>> replies;
  for (int i = 0; i < 8; ++i)
    replies.push_back(std::async(std::launch::async, [&url, i] { return complete(url, i); }));
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(text_of(replies[static_cast<std::size_t>(i)].get()), alone(i)) << "request " << i;
  // The scheduler picks by load: eight concurrent requests reach both processes.
  const auto metrics = decode_metrics(read_file(log_file));
  ASSERT_EQ(metrics.size(), 2u) << read_file(log_file);
  for (const auto& at : metrics)
    EXPECT_THAT(run_command("curl -s " + at).output,
                ::testing::ContainsRegex("troupe_generated_tokens_total [1-9]"))
        << at;

  // kill -9 rank 1 while long requests decode: only what it held fails, and it is named.
  const pid_t victim = decode_pid(log, 1);
  ASSERT_GT(victim, 0) << log;
  using clock = std::chrono::steady_clock;
  std::vector<std::future<std::pair<std::string, clock::time_point>>> held;
  // NOTES: the kill must find both processes mid-decode. Under load one process could finish its
  // 200-token requests (the most the tiny model's 256 positions allow) before the other began,
  // so the test sends waves of requests until two readings of the counters show both still
  // generating, and kills right after the second.
  std::vector<double> tokens_at_kill;
  for (int wave = 0; wave < 5; ++wave) {
    std::vector<double> before;
    for (const auto& at : metrics) before.push_back(generated_tokens(at));
    for (int i = 0; i < 6; ++i) {
      const int id = 100 + static_cast<int>(held.size());
      held.push_back(std::async(std::launch::async, [&url, id] {
        std::string text = complete(url, id, 200, true);
        return std::pair(std::move(text), clock::now());
      }));
    }
    ASSERT_TRUE(decoding_everywhere(metrics, before)) << read_file(log_file);
    std::vector<double> first;
    for (const auto& at : metrics) first.push_back(generated_tokens(at));
    tokens_at_kill.clear();
    for (const auto& at : metrics) tokens_at_kill.push_back(generated_tokens(at));
    bool both = true;
    for (std::size_t j = 0; j < metrics.size(); ++j) both = both && tokens_at_kill[j] > first[j];
    if (both) break;
  }
  const auto killed = clock::now();
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  int failed = 0;
  for (auto& reply : held) {
    const auto [text, when] = reply.get();
    if (text.find("\"error\"") == std::string::npos) continue;
    ++failed;
    EXPECT_THAT(text, HasSubstr("rank 1")) << text;
    EXPECT_LT(when - killed, std::chrono::seconds(10)) << "a failure was reported late";
  }
  EXPECT_GT(failed, 0) << "every request finished before the kill";
  // Rank 2 decoded on after the kill: its counter moved (rank 1's endpoint is gone).
  int moved_on = 0;
  for (std::size_t j = 0; j < metrics.size(); ++j)
    moved_on += generated_tokens(metrics[j]) > tokens_at_kill[j];
  EXPECT_EQ(moved_on, 1) << "rank 2's sequences did not go on after rank 1 was killed";
  // New requests go to rank 2 and complete as in one process.
  for (int i = 200; i < 204; ++i) EXPECT_EQ(text_of(complete(url, i)), alone(i)) << "request " << i;
  ::kill(three.pid(), SIGTERM);
  EXPECT_EQ(three.wait(), 0) << read_file(log_file);
}

TEST_F(ServeProcesses, ExpertShardsInOtherProcessesMoveBetweenThem) {
  // expert-hosts.toml: HTTP and the model on node0, expert shards 0-1 on node1 (rank 1) and 2-3
  // on node2 (rank 2), 4 redundant copies.
  const fs::path log_file = dir_ / "experts.log";
  background_command server(fmt::format("{} serve {} {}", troupe(),
                                        source("topologies/expert-hosts.toml").string(), common_),
                            log_file);
  const std::string url = url_of(log_file, server);
  ASSERT_FALSE(url.empty()) << read_file(log_file);
  // The expert processes print "ready" after the processes meet, maybe after the server's line.
  ASSERT_TRUE(troupe::testing::eventually(30, [&] {
    return read_file(log_file).find("expert process (node2): 2 expert shards ready") !=
           std::string::npos;
  })) << read_file(log_file);
  const std::string log = read_file(log_file);
  EXPECT_THAT(log, HasSubstr("expert process (rank 1, host node1) started"));
  const auto all_alone = [&](const std::string& when) {
    std::vector<std::future<std::string>> replies;
    for (int i = 0; i < 8; ++i)
      replies.push_back(std::async(std::launch::async, [&url, i] { return complete(url, i); }));
    for (int i = 0; i < 8; ++i)
      EXPECT_EQ(text_of(replies[static_cast<std::size_t>(i)].get()), alone(i))
          << when << ", request " << i;
  };
  all_alone("before any move");

  // Hot experts in every MoE layer: their copies move between the two expert processes.
  const fs::path load = dir_ / "hot.json";
  std::ofstream(load) << R"({"1": [100,1,1,1,1,90,1,1,1,1,1,1,1,1,1,80],
                             "2": [1,1,1,70,1,1,1,1,1,1,1,1,60,1,1,1],
                             "3": [50,1,1,1,1,1,1,1,1,1,1,1,1,1,1,40]})";
  // Each layer's experts on node1 (shards 0 and 1) after a re-placement for `file`.
  const auto node1_after = [&](const fs::path& file) {
    const auto moved = run_command(
        fmt::format("{} ctl step-000001 rebalance --json --load {}", troupe(), file.string()));
    EXPECT_EQ(moved.exit_code, 0) << moved.output << read_file(log_file);
    std::map<std::string, std::set<std::int64_t>> on_node1;
    const auto reply = nlohmann::json::parse(moved.output, nullptr, false);
    if (!reply.is_object()) return on_node1;
    EXPECT_GT(reply.value("moved", 0), 0) << moved.output;
    for (const auto& [layer, shards] : reply["instances"]["serve"]["shards"].items())
      for (int s = 0; s < 2; ++s)
        for (const auto& e : shards[s]) on_node1[layer].insert(e.get<std::int64_t>());
    return on_node1;
  };
  const auto first = node1_after(load);
  all_alone("after the re-placement");
  // The other experts hot: some expert leaves node1 for node2 (or comes the other way).
  const fs::path other = dir_ / "other.json";
  std::ofstream(other) << R"({"1": [1,1,1,1,1,1,1,1,100,90,80,1,1,1,1,1],
                              "2": [1,1,1,1,1,1,70,60,1,1,1,1,1,1,1,1],
                              "3": [1,1,50,40,1,1,1,1,1,1,1,1,1,1,1,1]})";
  const auto second = node1_after(other);
  ASSERT_FALSE(first.empty());
  EXPECT_NE(first, second) << "no expert crossed between node1 and node2";
  all_alone("after the second re-placement");
  const std::string plugins = fs::path(std::getenv("TROUPE_BUILD_DIR")) / "plugins";
  const auto swapped = run_command(fmt::format(
      "{} ctl step-000001 swap --plugin moe --library {}/moe/libtroupe-moe.so", troupe(), plugins));
  ASSERT_EQ(swapped.exit_code, 0) << swapped.output << read_file(log_file);
  // 3 MoE layers in the model and 4 remote shards.
  EXPECT_THAT(swapped.output, HasSubstr("7 plugin instances")) << swapped.output;
  all_alone("after the moe swap");

  // kill -9 rank 2: requests fail naming it, the server answers, status says it is lost.
  const pid_t victim = decode_pid(log, 2, "expert");
  ASSERT_GT(victim, 0) << log;
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  ASSERT_TRUE(troupe::testing::eventually(10, [&] {
    return read_file(log_file).find("expert process lost: rank 2") != std::string::npos;
  })) << read_file(log_file);
  EXPECT_THAT(complete(url, 0), HasSubstr("rank 2 (host node2")) << read_file(log_file);
  EXPECT_EQ(run_command("curl -s -o /dev/null -w '%{http_code}' " + url + "/health").output, "200");
  const auto status = run_command(fmt::format("{} ctl step-000001 status", troupe()));
  EXPECT_THAT(status.output, HasSubstr("expert process rank 2 on node2: lost")) << status.output;
  EXPECT_THAT(status.output, HasSubstr("expert process rank 1 on node1: running"));
  ::kill(server.pid(), SIGTERM);
  EXPECT_EQ(server.wait(), 0) << read_file(log_file);
}

TEST_F(ServeProcesses, DecodeAndExpertProcessesTogetherRebalanceEverywhere) {
  // four-hosts.toml with HTTP and prefill on node3 (rank 0), decode on node2 (rank 1), the
  // shards on node0 and node1 (ranks 2, 3).
  std::string text = read_file(source("topologies/four-hosts.toml"));
  const std::string decode = "decode_hosts = [\"node2\", \"node3\"]";
  ASSERT_NE(text.find(decode), std::string::npos);
  text.replace(text.find(decode), decode.size(),
               "prefill_host = \"node3\"\ndecode_hosts = [\"node2\"]\nexpert_shards = 2\n"
               "redundant_experts = 2\nexpert_hosts = [\"node0\", \"node1\"]");
  const std::string model = "models/tiny/config.json";
  text.replace(text.find(model), model.size(),
               source("topologies/models/tiny/config.json").string());
  const fs::path topology = dir_ / "mixed.toml";
  std::ofstream(topology) << text;
  const fs::path log_file = dir_ / "mixed.log";
  background_command server(fmt::format("{} serve {} {}", troupe(), topology.string(), common_),
                            log_file);
  const std::string url = url_of(log_file, server);
  ASSERT_FALSE(url.empty()) << read_file(log_file);
  EXPECT_THAT(read_file(log_file), HasSubstr("expert process (rank 3, host node1) started"));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(text_of(complete(url, i)), alone(i)) << "request " << i;
  const auto moved = run_command(fmt::format("{} ctl step-000001 rebalance", troupe()));
  ASSERT_EQ(moved.exit_code, 0) << moved.output << read_file(log_file);
  // Both processes' instances re-placed from what they saw.
  EXPECT_THAT(moved.output, ::testing::ContainsRegex("node2/decode0: moved \\([1-9]"));
  EXPECT_THAT(moved.output, ::testing::ContainsRegex("prefill0: moved \\([1-9]"));
  for (int i = 4; i < 8; ++i) EXPECT_EQ(text_of(complete(url, i)), alone(i)) << "request " << i;
  ::kill(server.pid(), SIGTERM);
  EXPECT_EQ(server.wait(), 0) << read_file(log_file);
}

}  // namespace
