// Hot swaps in a running `troupe train`, driven by `troupe ctl` as a user does: a job pauses
// after a step, plugins are swapped, the job resumes. A swap of an identical build changes no
// loss; FP8 GEMMs swapped for the built-in FP32 keep training going; a broken library, an ABI
// mismatch, a library that fails in init and one that declares other parameters each leave the
// job running unchanged (the same losses as a job nobody touched).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::background_command;
using troupe::testing::run_result;

constexpr int steps = 5;
constexpr int pause_after = 2;

std::string exe() {
  const char* path = std::getenv("TROUPE_EXE");
  if (path == nullptr) throw std::runtime_error("TROUPE_EXE is not set (run through meson test)");
  return path;
}

fs::path build_dir() {
  return std::getenv("TROUPE_BUILD_DIR");
}

fs::path test_plugin(const std::string& name) {
  return fs::path(std::getenv("TROUPE_TEST_PLUGIN_DIR")) / ("libtroupe-" + name + ".so");
}

/// Arguments every run shares: the same steps, threads and data, so losses compare exactly.
std::string train_arguments(const fs::path& dir, const std::string& extra = "") {
  return fmt::format("train --steps {} --threads 2 --quiet --log-json {} --checkpoint-dir {} {}",
                     steps, (dir / "steps.jsonl").string(), (dir / "checkpoints").string(), extra);
}

std::vector<double> losses(const fs::path& log) {
  std::vector<double> out;
  for (const auto& record : troupe::testing::read_json_lines(log))
    out.push_back(record.at("loss").get<double>());
  return out;
}

/// The losses of a job nobody touches (computed once).
const std::vector<double>& untouched_losses() {
  static const std::vector<double> reference = [] {
    const fs::path dir = troupe::testing::scratch_dir("control", "untouched");
    const run_result r = troupe::testing::run_command(exe() + " " + train_arguments(dir));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return losses(dir / "steps.jsonl");
  }();
  return reference;
}

/// A training job in the background that pauses after `pause_after` steps, and `troupe ctl`
/// for it.
class controlled_job {
 public:
  controlled_job(const std::string& name, const std::string& extra = "")
      : dir_(troupe::testing::scratch_dir("control", name)), name_(name) {
    process_ = std::make_unique<background_command>(
        environment() + exe() + " " +
            train_arguments(dir_,
                            fmt::format("--job {} --pause-after {} {}", name, pause_after, extra)),
        dir_ / "job.log");
  }

  run_result ctl(const std::string& arguments) const {
    return troupe::testing::run_command(environment() + exe() + " ctl " + name_ + " " + arguments);
  }
  nlohmann::json status() const {
    const run_result r = ctl("status --json");
    if (r.exit_code != 0) return nlohmann::json::object();
    return nlohmann::json::parse(r.output);
  }
  bool wait_until_paused() const {
    return troupe::testing::eventually(
        60, [&] { return status().value("state", std::string()) == "paused"; });
  }
  int finish() {
    EXPECT_EQ(ctl("resume").exit_code, 0);
    return process_->wait();
  }
  std::string log() const {
    std::ifstream in(dir_ / "job.log");
    return {std::istreambuf_iterator<char>(in), {}};
  }
  std::vector<double> losses() const { return ::losses(dir_ / "steps.jsonl"); }
  const fs::path& dir() const { return dir_; }

 private:
  std::string environment() const { return "env TROUPE_RUN_DIR=" + (dir_ / "run").string() + " "; }

  fs::path dir_;
  std::string name_;
  std::unique_ptr<background_command> process_;
};

TEST(HotSwap, AnIdenticalMoeBuildChangesNoLoss) {
  controlled_job job("identical-moe");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  const auto before = job.status();
  EXPECT_EQ(before.at("step"), pause_after);
  EXPECT_EQ(before.at("plugins").at("moe").at("generation"), 1);

  const fs::path moe = build_dir() / "plugins/moe/libtroupe-moe.so";
  const run_result swap = job.ctl("swap --plugin moe --library " + moe.string());
  ASSERT_EQ(swap.exit_code, 0) << swap.output << job.log();
  EXPECT_THAT(swap.output, HasSubstr("swapped the moe plugin after step 2"));
  EXPECT_THAT(swap.output, HasSubstr("(generation 2)"));

  const auto after = job.status();
  EXPECT_EQ(after.at("plugins").at("moe").at("generation"), 2);
  ASSERT_EQ(after.at("swaps").size(), 1u);
  EXPECT_EQ(after.at("swaps")[0].at("outcome"), "swapped");
  EXPECT_GT(after.at("swaps")[0].at("instances").get<int>(), 0);

  EXPECT_EQ(job.finish(), 0) << job.log();
  EXPECT_THAT(job.log(), HasSubstr("swapped the moe plugin after step 2"));
  EXPECT_THAT(job.log(), HasSubstr("the step loop paused"));
  EXPECT_EQ(job.losses(), untouched_losses()) << "an identical plugin changed the losses";
}

TEST(HotSwap, FailedSwapsLeaveTheJobRunningUnchanged) {
  controlled_job job("failed-swaps");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  struct attempt {
    std::string role, library, expected;
  };
  const std::vector<attempt> attempts{
      {"attention", test_plugin("broken-not-elf").string(), "not a loadable library"},
      {"gemm", test_plugin("broken-abi-major").string(), "ABI"},
      {"gemm", test_plugin("broken-init-fails").string(), "init"},
      {"moe", test_plugin("broken-init-fails").string(), "a plugin of kind moe is needed"},
      {"attention", test_plugin("test-attention").string(), "declares other parameters"},
      {"moe", (job.dir() / "no-such-library.so").string(), "no-such-library.so"},
  };
  for (const auto& a : attempts) {
    const run_result r = job.ctl("swap --plugin " + a.role + " --library " + a.library);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr(a.expected)) << a.library;
  }
  // Without the token nothing happens either.
  const std::string url =
      nlohmann::json::parse(std::ifstream(job.dir() / "run" / "failed-swaps" / "control.json"))
          .at("url");
  const run_result no_token = troupe::testing::run_command(
      "curl -s -o /dev/null -w '%{http_code}' -X POST " + url + "/v1/resume");
  EXPECT_EQ(no_token.output, "401");
  EXPECT_EQ(job.status().at("state"), "paused");

  const nlohmann::json plugins = job.status().at("plugins");
  for (const auto& [role, plugin] : plugins.items())
    EXPECT_LE(plugin.at("generation").get<int>(), 1) << role;
  EXPECT_EQ(job.status().at("swaps").size(), attempts.size());

  EXPECT_EQ(job.finish(), 0) << job.log();
  EXPECT_THAT(job.log(), HasSubstr("refused POST /v1/resume"));
  EXPECT_THAT(job.log(), HasSubstr("the job goes on"));
  EXPECT_EQ(job.losses(), untouched_losses()) << "a failed swap changed the losses";
}

TEST(HotSwap, Fp8GemmsSwappedForTheBuiltInFp32KeepTraining) {
  controlled_job job("fp8-to-fp32", "--set model.precision=fp8");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  EXPECT_EQ(job.status().at("plugins").at("gemm").at("plugin"), "fp8");
  const run_result swap = job.ctl("swap --plugin gemm --builtin");
  ASSERT_EQ(swap.exit_code, 0) << swap.output << job.log();
  EXPECT_THAT(swap.output, HasSubstr("fp8 1.0.0 -> builtin fp32"));
  EXPECT_EQ(job.status().at("plugins").at("gemm").at("plugin"), "builtin");
  EXPECT_EQ(job.finish(), 0) << job.log();
  const auto trained = job.losses();
  ASSERT_EQ(trained.size(), static_cast<std::size_t>(steps));
  for (double loss : trained) EXPECT_TRUE(std::isfinite(loss));
  // FP32 after the swap tracks the FP32 job within FP8's 1% (the weights saw two FP8 steps).
  const auto& fp32 = untouched_losses();
  for (std::size_t i = pause_after; i < trained.size(); ++i)
    EXPECT_NEAR(trained[i], fp32[i], 0.01 * fp32[i]) << "step " << i + 1;
}

TEST(HotSwap, TheControlAddressMustBeLoopbackAndPauseNeedsIt) {
  const fs::path dir = troupe::testing::scratch_dir("control", "addresses");
  const run_result wide = troupe::testing::run_command(
      exe() + " " + train_arguments(dir, "--set control.listen=0.0.0.0:0"));
  EXPECT_EQ(wide.exit_code, 1);
  EXPECT_THAT(wide.output, HasSubstr("control.listen = \"0.0.0.0:0\": the control endpoint "
                                     "listens on a loopback address only"));
  EXPECT_THAT(wide.output, HasSubstr("tiny.toml"));
  const run_result off = troupe::testing::run_command(
      exe() + " " + train_arguments(dir, "--set control.listen= --pause-after 1"));
  EXPECT_EQ(off.exit_code, 1);
  EXPECT_THAT(off.output, HasSubstr("needs the control endpoint"));
}

}  // namespace
