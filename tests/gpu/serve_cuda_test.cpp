// `troupe serve` on the GPU with its roles apart. Across processes: two-hosts.toml's decode
// instance in a second process, both on cuda:0; each prefilled sequence's cached rows leave the
// GPU, cross (UCX, from host memory) and go into the decode process's GPU cache. Requests sent one
// at a time (so both servers run the same kernels on the same shapes) get the greedy completions
// of one GPU server in one process; concurrent ones all complete; SIGTERM stops both processes.
// Across devices in one process: prefill on cuda:0 and decode on the CPU (or the reverse) give the
// greedy completions of a server whose other role is on the same device (tiny trained 40 steps,
// so a GPU and a CPU prefill pick the same tokens).
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
  return {{"model", "step-000040"},
          {"prompt", fmt::format("Roles apart on a GPU {}: ", i)},
          {"max_tokens", 12},
          {"temperature", 0}};
}

class ServeOnCuda : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!troupe::cuda::built_with_cuda() || troupe::cuda::device_count() == 0) return;
    dir_ = fs::temp_directory_path() / fmt::format("troupe-gpu-serve-{}", ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const auto trained = run_command(fmt::format(
        "{} train {} --steps 40 --checkpoint-dir {} --threads 2 --quiet", troupe(),
        (troupe::testing::source_dir() / "topologies/tiny.toml").string(), (dir_ / "ck").string()));
    ASSERT_EQ(trained.exit_code, 0) << trained.output;
    ::setenv("TROUPE_RUN_DIR", (dir_ / "run").c_str(), 1);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::string troupe() { return std::getenv("TROUPE_EXE"); }
  /// `troupe serve ARGUMENTS` on the checkpoint: the four greedy completions, one at a time.
  static std::vector<std::string> completions(const std::string& arguments,
                                              const std::string& name) {
    const fs::path log = dir_ / (name + ".log");
    background_command server(fmt::format("{} serve {} {}", troupe(), arguments, common()), log);
    const std::string url = troupe::testing::served_url(log, server);
    EXPECT_FALSE(url.empty()) << read_text(log);
    std::vector<std::string> texts;
    for (int i = 0; !url.empty() && i < 4; ++i)
      texts.push_back(troupe::testing::completion_text(url, request(i)));
    for (const std::string& text : texts) EXPECT_FALSE(text.starts_with("<")) << text;
    return texts;
  }
  static std::string common() {
    return fmt::format(
        "--model {} --listen 127.0.0.1:0 --threads 2 --kv-cache-mib 16 --cache-dtype f32",
        (dir_ / "ck" / "step-000040").string());
  }
  static inline fs::path dir_;
};

TEST_F(ServeOnCuda, DecodeInAnotherProcessGivesTheOneProcessCompletions) {
  TROUPE_SKIP_WITHOUT_GPU();
  const auto alone = completions("--device cuda:0", "one");
  const fs::path log = dir_ / "two.log";
  background_command two(
      fmt::format("{} serve {} --device cuda:0 {}", troupe(),
                  (troupe::testing::source_dir() / "topologies/two-hosts.toml").string(), common()),
      log);
  const std::string url = troupe::testing::served_url(log, two);
  ASSERT_FALSE(url.empty()) << read_text(log);
  // The decode process prints it after the processes meet, maybe after the server's line.
  EXPECT_TRUE(troupe::testing::eventually(30, [&] {
    return read_text(log).find("decode process (node1): 1 decode instances ready") !=
           std::string::npos;
  })) << read_text(log);
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
    EXPECT_FALSE(text.starts_with("<")) << text;  // an error, or no reply at all
  }
  ::kill(two.pid(), SIGTERM);
  EXPECT_EQ(two.wait(), 0) << read_text(log);
}

TEST_F(ServeOnCuda, PrefillAndDecodeOnDifferentDevicesInOneProcess) {
  TROUPE_SKIP_WITHOUT_GPU();
  const std::string split = "--prefill-instances 1 --decode-instances 1";
  const auto cpu = completions(split + " --device cpu", "cpu");
  EXPECT_EQ(completions(split + " --prefill-device cuda:0 --decode-device cpu", "gpu-cpu"), cpu)
      << "prefill on cuda:0, decode on the CPU";
  const auto gpu = completions(split + " --device cuda:0", "gpu");
  EXPECT_EQ(completions(split + " --prefill-device cpu --decode-device cuda:0", "cpu-gpu"), gpu)
      << "prefill on the CPU, decode on cuda:0";
}

}  // namespace
