// `troupe serve --device cuda:0` with its decode instance in a second process (two-hosts.toml's
// decode_host, both processes on the same GPU): each prefilled sequence's cached rows leave the
// GPU, cross to the decode process (UCX, from host memory) and go into its GPU cache. Requests
// sent one at a time (so both servers run the same kernels on the same shapes) get the greedy
// completions of one GPU server in one process; concurrent ones all complete; SIGTERM stops both
// processes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <future>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/gpu/gpu_skip.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/fixtures.hpp"
#include "tests/support/served_process.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::background_command;
using troupe::testing::read_text;
using troupe::testing::run_command;

nlohmann::json request(int i) {
  return {{"model", "step-000001"},
          {"prompt", fmt::format("Across processes on a GPU {}: ", i)},
          {"max_tokens", 16},
          {"temperature", 0}};
}

TEST(ServeOnCuda, DecodeInAnotherProcessGivesTheOneProcessCompletions) {
  TROUPE_SKIP_WITHOUT_GPU();
  const std::string troupe = std::getenv("TROUPE_EXE");
  const fs::path dir = fs::temp_directory_path() / fmt::format("troupe-gpu-serve-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto trained = run_command(
      fmt::format("{} train {} --steps 1 --checkpoint-dir {} --set train.micro_batch_size=2 --set "
                  "train.sequence_length=32 --threads 2 --quiet",
                  troupe, (troupe::testing::source_dir() / "topologies/tiny.toml").string(),
                  (dir / "ck").string()));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  ::setenv("TROUPE_RUN_DIR", (dir / "run").c_str(), 1);
  const std::string common = fmt::format(
      "--model {} --device cuda:0 --listen 127.0.0.1:0 --threads 2 --kv-cache-mib 16 "
      "--cache-dtype f32",
      (dir / "ck" / "step-000001").string());

  std::vector<std::string> alone;
  {
    background_command one(fmt::format("{} serve {}", troupe, common), dir / "one.log");
    const std::string url = troupe::testing::served_url(dir / "one.log", one);
    ASSERT_FALSE(url.empty()) << read_text(dir / "one.log");
    for (int i = 0; i < 4; ++i) alone.push_back(troupe::testing::completion_text(url, request(i)));
  }
  for (const std::string& text : alone) ASSERT_EQ(text.find('<'), std::string::npos) << text;

  const fs::path log = dir / "two.log";
  background_command two(
      fmt::format("{} serve {} {}", troupe,
                  (troupe::testing::source_dir() / "topologies/two-hosts.toml").string(), common),
      log);
  const std::string url = troupe::testing::served_url(log, two);
  ASSERT_FALSE(url.empty()) << read_text(log);
  EXPECT_THAT(read_text(log), HasSubstr("decode process (node1): 1 decode instances ready"));
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(troupe::testing::completion_text(url, request(i)), alone[static_cast<std::size_t>(i)])
        << "request " << i;
  std::vector<std::future<std::string>> concurrent;
  for (int i = 0; i < 8; ++i)
    concurrent.push_back(std::async(std::launch::async, [&url, i] {
      return troupe::testing::completion_text(url, request(i));
    }));
  for (auto& reply : concurrent) {
    const std::string text = reply.get();
    EXPECT_EQ(text.find("<{\"error\""), std::string::npos) << text;
  }
  ::kill(two.pid(), SIGTERM);
  EXPECT_EQ(two.wait(), 0) << read_text(log);
  fs::remove_all(dir);
}

}  // namespace
