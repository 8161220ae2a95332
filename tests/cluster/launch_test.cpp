// `troupe launch` on the loopback: the same losses as one process, failure detection within
// 10 s (a killed process, a stopped one), resume after a failure, and rendezvous errors.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/checkpoint/safetensors.hpp"
#include "tests/support/command_runs.hpp"

namespace {

namespace fs = std::filesystem;

using troupe::testing::read_json_lines;
using troupe::testing::run_result;

/// Runs a bash script; its output (stdout and stderr) and exit status.
run_result shell(const std::string& script) {
  return troupe::testing::run_command("bash -c '" + script + "'");
}

std::string troupe() {
  const char* exe = std::getenv("TROUPE_EXE");
  if (exe == nullptr) throw std::runtime_error("TROUPE_EXE is not set (run through meson test)");
  return exe;
}

std::string topology(const std::string& name) {
  const fs::path source = std::getenv("TROUPE_SOURCE_DIR");
  const fs::path shipped = source / "topologies" / name;
  return (fs::exists(shipped) ? shipped : source / "tests/fixtures/topologies" / name).string();
}

fs::path scratch_dir(const std::string& name) {
  return troupe::testing::scratch_dir("launch-test", name);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// One compute thread per process, in every run: the same summation order everywhere.
const std::string quick = " --quiet --threads 1";

/// The per-step losses of `troupe train` and `troupe launch` of one topology agree to 1e-6
/// (relative; they are bit-identical in practice), and so do gradient norms and expert loads.
/// `single_extra` goes to the one-process run only; returns the launch's output.
std::string expect_same_losses(const std::string& file, int steps,
                               const std::string& single_extra = "") {
  const fs::path dir = scratch_dir(file);
  const std::string common = fmt::format(" --steps {}{}", steps, quick);
  auto single = shell(fmt::format("{} train {} --log-json {} --checkpoint-dir {}{}{}", troupe(),
                                  topology(file), (dir / "one.json").string(),
                                  (dir / "ck1").string(), common, single_extra));
  EXPECT_EQ(single.exit_code, 0) << single.output;
  auto multi = shell(fmt::format("{} launch {} --log-json {} --checkpoint-dir {}{}", troupe(),
                                 topology(file), (dir / "many.json").string(),
                                 (dir / "ck2").string(), common));
  EXPECT_EQ(multi.exit_code, 0) << multi.output;
  if (single.exit_code != 0 || multi.exit_code != 0) return multi.output;
  EXPECT_TRUE(contains(multi.output, "processes on this machine")) << multi.output;
  const auto one = read_json_lines(dir / "one.json"), many = read_json_lines(dir / "many.json");
  EXPECT_EQ(one.size(), static_cast<std::size_t>(steps));
  if (many.size() != one.size()) {
    ADD_FAILURE() << file << ": " << many.size() << " steps logged, " << one.size() << " expected";
    return multi.output;
  }
  for (std::size_t s = 0; s < one.size(); ++s) {
    for (const char* field : {"loss", "mtp_loss", "balance_loss", "grad_norm"}) {
      const double a = one[s][field].get<double>(), b = many[s][field].get<double>();
      EXPECT_LE(std::abs(a - b), 1e-6 * std::abs(a)) << file << " step " << s + 1 << " " << field;
    }
    EXPECT_EQ(one[s]["expert_load"], many[s]["expert_load"]) << file << " step " << s + 1;
  }
  return multi.output;
}

TEST(Launch, TwoProcessesGiveTheSingleProcessLosses) {
  expect_same_losses("two-hosts.toml", 4);
}

TEST(Launch, FourProcessesGiveTheSingleProcessLosses) {
  expect_same_losses("four-hosts.toml", 4);
}

TEST(Launch, BalancerAndEmaInAnotherProcessGiveTheSameLossesAndAverages) {
  expect_same_losses("remote-roles.toml", 3);
  // The EMA, written by node1's process into the shared checkpoint, equals the one-process EMA.
  const fs::path dir = fs::temp_directory_path() /
                       ("troupe-launch-test-" + std::to_string(::getpid())) / "remote-roles.toml";
  for (const char* file : {"model.safetensors"}) {
    const fs::path one = dir / "ck1" / "step-000003" / "ema" / file;
    const fs::path many = dir / "ck2" / "step-000003" / "ema" / file;
    ASSERT_TRUE(fs::exists(one) && fs::exists(many)) << one << " " << many;
    std::ifstream a(one, std::ios::binary), b(many, std::ios::binary);
    const std::string bytes_a((std::istreambuf_iterator<char>(a)),
                              std::istreambuf_iterator<char>());
    const std::string bytes_b((std::istreambuf_iterator<char>(b)),
                              std::istreambuf_iterator<char>());
    EXPECT_TRUE(bytes_a == bytes_b) << "the EMA differs between one and two processes";
  }
}

/// Starts a long launch, waits for `steps` logged steps, sends `signal` to rank `rank`, and
/// reports the launcher's exit status and the seconds from the signal to the launcher's exit.
run_result break_a_rank(const fs::path& dir, const std::string& file, int rank,
                        const std::string& signal, const std::string& extra, double& seconds) {
  const std::string log = (dir / "log.json").string(), err = (dir / "err.txt").string();
  const std::string script = fmt::format(
      "{} launch {} --steps 100000 --log-json {} --checkpoint-dir {} "
      "--set train.checkpoint_every=2{}{} 2> {} & launcher=$!; "
      "for i in $(seq 1200); do [ -f {} ] && [ $(wc -l < {}) -ge 3 ] && break; sleep 0.05; done; "
      "pid=$(grep -o \"rank {} = [a-z0-9]* (pid [0-9]*)\" {} | grep -o \"[0-9]*)\" | tr -d \")\"); "
      "start=$(date +%s.%N); kill -{} $pid; "
      "for i in $(seq 600); do kill -0 $launcher 2>/dev/null || break; sleep 0.05; done; "
      "end=$(date +%s.%N); kill -9 $pid 2>/dev/null; kill -9 $launcher 2>/dev/null; "
      "wait $launcher; echo exit=$?; echo seconds=$(echo \"$end - $start\" | bc); cat {}",
      troupe(), topology(file), log, (dir / "ckpt").string(), quick, extra, err, log, log, rank,
      err, signal, err);
  auto result = shell(script);
  const auto at = result.output.find("seconds=");
  seconds = at == std::string::npos ? 1e9 : std::stod(result.output.substr(at + 8));
  return result;
}

TEST(Launch, AKilledProcessIsReportedWithin10SecondsAndTheJobResumes) {
  const fs::path dir = scratch_dir("kill");
  double seconds = 0;
  auto broken = break_a_rank(dir, "two-hosts.toml", 1, "9", "", seconds);
  EXPECT_TRUE(contains(broken.output, "exit=5")) << broken.output;
  EXPECT_LT(seconds, 10.0) << broken.output;
  // The message names the lost actors, their host and where the run stands.
  EXPECT_TRUE(contains(broken.output, "rank 1 (host node1: ")) << broken.output;
  EXPECT_TRUE(contains(broken.output, "stage1")) << broken.output;
  EXPECT_TRUE(contains(broken.output, "the last completed step is ")) << broken.output;
  std::cout << "killed rank 1: the launcher exited " << seconds << " s later\n";

  // The last checkpoint is intact: resume from it and run two more steps.
  std::ifstream latest(dir / "ckpt" / "latest");
  std::string name;
  std::getline(latest, name);
  ASSERT_FALSE(name.empty()) << broken.output;
  const int checkpointed = std::stoi(name.substr(5));
  auto resumed = shell(fmt::format("{} launch {} --steps {} --checkpoint-dir {} --resume {}{}",
                                   troupe(), topology("two-hosts.toml"), checkpointed + 2,
                                   (dir / "ckpt").string(), (dir / "ckpt").string(), quick));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, fmt::format("at step {}", checkpointed))) << resumed.output;
  EXPECT_TRUE(fs::exists(dir / "ckpt" / fmt::format("step-{:06d}", checkpointed + 2)));
}

/// Bytes of the tensors in a safetensors file.
std::int64_t tensor_bytes(const fs::path& file) {
  const auto contents = troupe::safetensors_file::open(file);
  std::int64_t bytes = 0;
  for (const auto& entry : contents.entries())
    bytes += static_cast<std::int64_t>(contents.get(entry.name).nbytes());
  return bytes;
}

TEST(Launch, ZeroOneAcrossTwoProcessesGivesThePlainDataParallelLosses) {
  // Two replicas in two processes under ZeRO-1 (the pieces over UCX) against plain data
  // parallelism in one process: the same losses to 1e-6, and each replica keeps half of the
  // moments the plain run's first replica keeps.
  const std::string output = expect_same_losses("zero-two-hosts.toml", 4, " --set train.zero=0");
  EXPECT_TRUE(contains(output, "(rank 1, node1): ZeRO-1: stage0.r1 keeps")) << output;
  const fs::path dir = fs::temp_directory_path() /
                       ("troupe-launch-test-" + std::to_string(::getpid())) / "zero-two-hosts.toml";
  const auto plain =
      tensor_bytes(dir / "ck1" / "step-000004" / "optimizer" / "stage0.r0.safetensors");
  for (const char* replica : {"stage0.r0", "stage0.r1"}) {
    const auto kept = tensor_bytes(dir / "ck2" / "step-000004" / "optimizer" /
                                   (std::string(replica) + ".safetensors"));
    EXPECT_NEAR(static_cast<double>(kept), plain / 2.0, 0.01 * static_cast<double>(plain))
        << replica;
    std::cout << replica << " keeps " << kept << " bytes of moments, plain data parallelism "
              << plain << "\n";
  }
  // A replica killed in the middle: named within 10 s, nobody waits for its pieces.
  double seconds = 0;
  auto broken = break_a_rank(dir, "zero-two-hosts.toml", 1, "9", "", seconds);
  EXPECT_TRUE(contains(broken.output, "exit=5")) << broken.output;
  EXPECT_LT(seconds, 10.0) << broken.output;
  EXPECT_TRUE(contains(broken.output, "stage0.r1")) << broken.output;
}

TEST(Launch, AStoppedProcessIsReportedByTheHeartbeats) {
  const fs::path dir = scratch_dir("stop");
  double seconds = 0;
  auto broken = break_a_rank(dir, "four-hosts.toml", 2, "STOP", " --heartbeat-timeout 3", seconds);
  EXPECT_TRUE(contains(broken.output, "exit=5")) << broken.output;
  EXPECT_LT(seconds, 10.0) << broken.output;
  EXPECT_TRUE(contains(broken.output,
                       "rank 2 (host node2: shard0, shard1) stopped answering: "
                       "no heartbeat for 3 s"))
      << broken.output;
  std::cout << "stopped rank 2: the launcher exited " << seconds << " s later\n";
}

TEST(Launch, RendezvousTimeoutNamesTheMissingRanks) {
  // Rank 0 alone of a world of four: ranks 1 to 3 never come.
  const int port = 20000 + ::getpid() % 20000;
  auto alone = shell(
      fmt::format("TROUPE_RANK=0 TROUPE_WORLD_SIZE=4 TROUPE_RENDEZVOUS=127.0.0.1:{} {} launch {} "
                  "--rendezvous-timeout 1.5{}",
                  port, troupe(), topology("four-hosts.toml"), quick));
  EXPECT_EQ(alone.exit_code, 5) << alone.output;
  EXPECT_TRUE(contains(alone.output,
                       "rank 1 (host node1), rank 2 (host node2), rank 3 (host "
                       "node3) never arrived within 1.5 s"))
      << alone.output;
  // A rank without its rank 0.
  auto lost = shell(
      fmt::format("TROUPE_RANK=1 TROUPE_WORLD_SIZE=2 TROUPE_RENDEZVOUS=127.0.0.1:9 {} launch {} "
                  "--rendezvous-timeout 1{}",
                  troupe(), topology("two-hosts.toml"), quick));
  EXPECT_EQ(lost.exit_code, 5) << lost.output;
  EXPECT_TRUE(contains(lost.output, "rank 1 cannot reach rank 0 at 127.0.0.1:9 within 1 s"))
      << lost.output;
}

TEST(Launch, AWorldThatDoesNotMatchTheHostsIsRefused) {
  auto mismatch = shell(fmt::format("OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=3 {} launch {}{}",
                                    troupe(), topology("two-hosts.toml"), quick));
  EXPECT_EQ(mismatch.exit_code, 1) << mismatch.output;
  EXPECT_TRUE(contains(mismatch.output,
                       "places its actors on 2 hosts (node0, node1), but openmpi started 3"))
      << mismatch.output;
}

}  // namespace
