// NCCL between processes, one GPU each (the multigpu suite: `meson test -C build --setup multigpu
// --suite multigpu`; it skips with a message where fewer than two GPUs are visible). Two, four
// and eight ranks (as many as there are GPUs) run every operation with the values they must give,
// expert parallelism's FP8 dispatch and BF16 combine with the host codecs' bits, and ZeRO-1 steps
// as plain AdamW on the summed gradients (to 1e-6), and communicators per process group whose ids
// pass through the job's rendezvous (CAF), and 1F1B and DualPipe with their activations and
// gradients over NCCL giving one process's gradients; a rank killed with -9 is reported by the
// other within 10 s, and nobody hangs in a collective.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "runtime/device/cuda.hpp"
#include "runtime/transport/nccl_communicator.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/free_port.hpp"

namespace {

namespace fs = std::filesystem;
using troupe::testing::run_command;

#define SKIP_WITHOUT_GPUS(n)                                                                 \
  do {                                                                                       \
    std::string why;                                                                         \
    if (!troupe::nccl_communicator::available(&why)) GTEST_SKIP() << why;                    \
    if (troupe::cuda::device_count() < (n))                                                  \
      GTEST_SKIP() << (n) << " GPUs needed, " << troupe::cuda::device_count() << " visible"; \
  } while (false)

std::string peer() {
  if (const char* packed = std::getenv("TROUPE_TEST_NCCL_PEER")) return packed;  // gpu_pack.sh
  const char* build = std::getenv("TROUPE_BUILD_DIR");
  return (fs::path(build != nullptr ? build : ".") / "tests" / "troupe-test-nccl-peer").string();
}

fs::path scratch(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / fmt::format("troupe-nccl-{}-{}", ::getpid(), name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// Runs `mode` on 2, 4 and 8 ranks (as many as there are GPUs) and expects "ok" from each.
void expect_every_rank_ok(const std::string& mode) {
  for (int ranks : {2, 4, 8}) {
    if (troupe::cuda::device_count() < ranks) break;
    const fs::path dir = scratch(fmt::format("{}{}", mode, ranks));
    // The id's file, or for "group" the rendezvous port of the ranks' troupe job.
    const std::string meeting = mode == "group" || mode == "pipeline"
                                    ? std::to_string(troupe::test::free_tcp_port())
                                    : (dir / "id").string();
    std::string script;
    for (int r = 0; r < ranks; ++r)
      script += fmt::format("{} {} {} {} {} > {} 2>&1 & ", peer(), meeting, ranks, r, mode,
                            (dir / fmt::format("out{}", r)).string());
    script += "wait; cat " + (dir / "out*").string();
    const auto result = run_command("bash -c '" + script + "'");
    std::size_t oks = 0;
    for (std::size_t at = result.output.find("ok\n"); at != std::string::npos;
         at = result.output.find("ok\n", at + 1))
      ++oks;
    EXPECT_EQ(oks, static_cast<std::size_t>(ranks)) << ranks << " ranks\n" << result.output;
  }
}

TEST(NcclProcesses, EveryRankGetsTheRightValues) {
  SKIP_WITHOUT_GPUS(2);
  expect_every_rank_ok("ops");
}

TEST(NcclProcesses, ExpertDispatchInFp8AndCombineInBf16AcrossRanks) {
  SKIP_WITHOUT_GPUS(2);
  expect_every_rank_ok("experts");
}

TEST(NcclProcesses, ZeroOneEqualsPlainAdamwOnTheSummedGradients) {
  SKIP_WITHOUT_GPUS(2);
  expect_every_rank_ok("zero");
}

TEST(NcclProcesses, GroupsJoinWithTheirIdsThroughTheJobsRendezvous) {
  SKIP_WITHOUT_GPUS(2);
  expect_every_rank_ok("group");
}

TEST(NcclProcesses, PipelineSchedulesOverNcclGiveTheGradientsOfOneProcess) {
  SKIP_WITHOUT_GPUS(2);
  expect_every_rank_ok("pipeline");
}

TEST(NcclProcesses, AKilledRankIsReportedWithin10Seconds) {
  SKIP_WITHOUT_GPUS(2);
  const fs::path dir = scratch("kill");
  const std::string out0 = (dir / "out0").string(), out1 = (dir / "out1").string();
  const std::string script = fmt::format(
      "{0} {1} 2 0 wait > {2} 2>&1 & first=$!; {0} {1} 2 1 wait > {3} 2>&1 & second=$!; "
      "for i in $(seq 400); do grep -q joined {3} 2>/dev/null && break; sleep 0.05; done; "
      "sleep 1; kill -9 $second; wait $first; echo exit=$?; cat {2}",
      peer(), (dir / "id").string(), out0, out1);
  const auto result = run_command("timeout 60 bash -c '" + script + "'");
  EXPECT_NE(result.output.find("exit=3"), std::string::npos) << result.output;
  const auto at = result.output.find("failed after ");
  ASSERT_NE(at, std::string::npos) << result.output;
  const double seconds = std::stod(result.output.substr(at + 13));
  EXPECT_LT(seconds, 12.0) << "1 s of work before the kill, then at most the 10 s deadline\n"
                           << result.output;
  std::cout << result.output;
}

}  // namespace
