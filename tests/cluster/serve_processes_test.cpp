// `troupe serve topologies/two-hosts.toml` as two processes on this machine ([serve]
// decode_host = "node1"): HTTP and prefill in the first, decode in the second, every prefilled
// sequence moving with its cached rows between them (UCX). Concurrent requests, greedy and
// sampled, get the completions of a server in one process, and the decode process serves its own
// metrics; a decode process killed with -9 fails
// the requests it held with a message naming it, within 10 s, and the server keeps answering;
// SIGTERM stops both processes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"

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
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), {}};
}

/// The server's URL from its log ("serving NAME at http://127.0.0.1:PORT ..."), or "".
std::string url_of(const fs::path& log, background_command& server) {
  std::string url;
  troupe::testing::eventually(90, [&] {
    const std::string text = read_file(log);
    const auto serving = text.find("troupe serve: serving ");
    const auto at = text.find(" at http://", serving == std::string::npos ? text.size() : serving);
    if (at == std::string::npos) return server.exited();
    url = text.substr(at + 4, text.find(' ', at + 4) - at - 4);
    return true;
  });
  return url;
}

std::string complete(const std::string& url, int i, int max_tokens = 12) {
  const nlohmann::json body{{"model", "step-000001"},
                            {"prompt", fmt::format("Across processes {}: ", i)},
                            {"max_tokens", max_tokens},
                            {"temperature", i % 2 == 0 ? 0.0 : 0.8},
                            {"seed", i}};
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

TEST(ServeProcesses, DecodeInAnotherProcessGivesTheOneProcessCompletions) {
  const fs::path dir = troupe::testing::scratch_dir("launch-test", "serve-processes");
  const auto trained = run_command(
      fmt::format("{} train {} --steps 1 --checkpoint-dir {} --set train.micro_batch_size=2 --set "
                  "train.sequence_length=32 --threads 2 --quiet",
                  troupe(), source("topologies/tiny.toml").string(), (dir / "ck").string()));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const std::string model = (dir / "ck" / "step-000001").string();
  const std::string common = fmt::format(
      "--model {} --listen 127.0.0.1:0 --threads 2 --kv-cache-mib 16 --cache-dtype f32", model);

  std::vector<std::string> alone;
  {
    background_command one(fmt::format("{} serve {}", troupe(), common), dir / "one.log");
    const std::string url = url_of(dir / "one.log", one);
    ASSERT_FALSE(url.empty()) << read_file(dir / "one.log");
    for (int i = 0; i < 8; ++i) alone.push_back(text_of(complete(url, i)));
  }

  background_command two(
      fmt::format("{} serve {} {}", troupe(), source("topologies/two-hosts.toml").string(), common),
      dir / "two.log");
  const std::string url = url_of(dir / "two.log", two);
  ASSERT_FALSE(url.empty()) << read_file(dir / "two.log");
  const std::string log = read_file(dir / "two.log");
  EXPECT_THAT(log, HasSubstr("decode process (rank 1, host node1) started"));
  EXPECT_THAT(log, HasSubstr("decode process (node1): 1 decode instances ready"));
  std::vector<std::future<std::string>> replies;
  for (int i = 0; i < 8; ++i)
    replies.push_back(std::async(std::launch::async, [&url, i] { return complete(url, i); }));
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(text_of(replies[static_cast<std::size_t>(i)].get()),
              alone[static_cast<std::size_t>(i)])
        << "request " << i;

  // The decode process serves its own metrics (two-hosts.toml's [monitoring] metrics).
  const std::string after = read_file(dir / "two.log");
  const auto metrics_at = after.find("decode process metrics at ");
  ASSERT_NE(metrics_at, std::string::npos) << after;
  const std::string metrics_url =
      after.substr(metrics_at + 26, after.find('\n', metrics_at) - metrics_at - 26);
  EXPECT_THAT(run_command("curl -s " + metrics_url).output,
              ::testing::ContainsRegex("troupe_generated_tokens_total [1-9]"));

  // kill -9 the decode process while long requests decode there.
  const auto pid_at = log.find("started, pid ");
  ASSERT_NE(pid_at, std::string::npos) << log;
  const pid_t decode = std::stoi(log.substr(pid_at + 13));
  std::vector<std::future<std::string>> held;
  for (int i = 0; i < 4; ++i)
    held.push_back(
        std::async(std::launch::async, [&url, i] { return complete(url, 100 + i, 200); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
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

}  // namespace
