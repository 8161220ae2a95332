// Hot swaps in a running `troupe train`, driven by `troupe ctl` as a user does: a job pauses
// after a step, plugins are swapped, the job resumes. A swap of an identical build changes no
// loss; FP8 GEMMs swapped for the built-in FP32 keep training going (the built-in BF16 is refused
// on CPU stages, and a precision of neither is refused by ctl and by the job); a broken library,
// an ABI mismatch, a library that fails in init and one that declares other parameters each leave
// the job running unchanged (the same losses as a job nobody touched); so do libraries that
// segfault, exit or hang while loading, which only a probe process ever loads.
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

#include "runtime/control/http_client.hpp"
#include "runtime/control/job_directory.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/controlled_job.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::run_result;

constexpr int steps = 5;
constexpr int pause_after = 2;

std::string exe() {
  return troupe::testing::troupe_exe();
}

fs::path build_dir() {
  return std::getenv("TROUPE_BUILD_DIR");
}

fs::path test_plugin(const std::string& name) {
  return fs::path(std::getenv("TROUPE_TEST_PLUGIN_DIR")) / ("libtroupe-" + name + ".so");
}

/// A library that crashes, exits or hangs whoever loads it (tests/plugins/unsafe).
fs::path unsafe_plugin(const std::string& name) {
  return fs::path(std::getenv("TROUPE_TEST_UNSAFE_PLUGIN_DIR")) /
         ("libtroupe-broken-" + name + ".so");
}

/// Arguments every run shares: the same steps, threads and data, so losses compare exactly.
std::string train_arguments(const fs::path& dir, const std::string& extra = "") {
  return fmt::format("--steps {} --threads 2 --quiet --log-json {} --checkpoint-dir {} {}", steps,
                     (dir / "steps.jsonl").string(), (dir / "checkpoints").string(), extra);
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
    const run_result r = troupe::testing::run_command(exe() + " train " + train_arguments(dir));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return losses(dir / "steps.jsonl");
  }();
  return reference;
}

/// A job of the shared arguments that pauses after `pause_after` steps.
troupe::testing::controlled_job start_job(const std::string& name, const std::string& extra = "") {
  const fs::path dir = troupe::testing::scratch_dir("control", name);
  return {dir, name, train_arguments(dir, fmt::format("--pause-after {} {}", pause_after, extra))};
}

std::vector<double> losses_of(const troupe::testing::controlled_job& job) {
  return losses(job.dir() / "steps.jsonl");
}

TEST(HotSwap, AnIdenticalMoeBuildChangesNoLoss) {
  auto job = start_job("identical-moe");
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
  EXPECT_EQ(losses_of(job), untouched_losses()) << "an identical plugin changed the losses";
}

TEST(HotSwap, FailedSwapsLeaveTheJobRunningUnchanged) {
  auto job = start_job("failed-swaps");
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
  const std::string url = job.control_url();
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
  EXPECT_EQ(losses_of(job), untouched_losses()) << "a failed swap changed the losses";
}

TEST(HotSwap, LibrariesThatCrashOrHangWhileLoadingAreRefusedAndTrainingGoesOn) {
  // The job inherits the probe's deadline: a library that hangs in init() costs it 2 s.
  ::setenv("TROUPE_PLUGIN_PROBE_TIMEOUT", "2", 1);
  auto job = start_job("unsafe-swaps");
  ::unsetenv("TROUPE_PLUGIN_PROBE_TIMEOUT");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  struct attempt {
    std::string role;
    fs::path library;
    std::string expected;
  };
  const std::vector<attempt> attempts{
      {"gemm", unsafe_plugin("init-segv"),
       "killed by SIGSEGV (Segmentation fault) in init() of plugin 'broken-init-segv'"},
      {"moe", unsafe_plugin("entry-segv"), "killed by SIGSEGV (Segmentation fault) in troupe_"},
      {"attention", unsafe_plugin("ctor-exit"), "exited with status 0"},
      {"gemm", unsafe_plugin("init-hangs"), "timed out while loading"},
      {"moe", fs::path(std::getenv("TROUPE_TEST_IMPOSTOR_PLUGIN_DIR")) / "libtroupe-moe.so",
       "calls itself 'mla', but its file name says 'moe'"},
  };
  for (const auto& a : attempts) {
    const run_result r = job.ctl("swap --plugin " + a.role + " --library " + a.library.string());
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr(a.library.string()));
    EXPECT_THAT(r.output, HasSubstr(a.expected)) << a.library;
  }
  const auto status = job.status();
  EXPECT_EQ(status.at("state"), "paused");
  EXPECT_EQ(status.at("step"), pause_after);
  for (const auto& [role, plugin] : status.at("plugins").items())
    EXPECT_LE(plugin.at("generation").get<int>(), 1) << role;

  // Steps advance after the refusals, as in a job nobody touched.
  EXPECT_EQ(job.finish(), 0) << job.log();
  EXPECT_THAT(job.log(), HasSubstr("the job goes on"));
  EXPECT_EQ(losses_of(job), untouched_losses()) << "a refused swap changed the losses";
  EXPECT_EQ(losses_of(job).size(), static_cast<std::size_t>(steps));
}

TEST(HotSwap, Fp8GemmsSwappedForTheBuiltInFp32KeepTraining) {
  auto job = start_job("fp8-to-fp32", "--set model.precision=fp8");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  EXPECT_EQ(job.status().at("plugins").at("gemm").at("plugin"), "fp8");
  const run_result swap = job.ctl("swap --plugin gemm --builtin");
  ASSERT_EQ(swap.exit_code, 0) << swap.output << job.log();
  EXPECT_THAT(swap.output, HasSubstr("fp8 1.0.0 -> builtin fp32"));
  EXPECT_EQ(job.status().at("plugins").at("gemm").at("plugin"), "builtin");
  EXPECT_EQ(job.status().at("plugins").at("gemm").at("version"), "fp32");
  EXPECT_EQ(job.finish(), 0) << job.log();
  const auto trained = losses_of(job);
  ASSERT_EQ(trained.size(), static_cast<std::size_t>(steps));
  for (double loss : trained) EXPECT_TRUE(std::isfinite(loss));
  // FP32 after the swap tracks the FP32 job within FP8's 1% (the weights saw two FP8 steps).
  const auto& fp32 = untouched_losses();
  for (std::size_t i = pause_after; i < trained.size(); ++i)
    EXPECT_NEAR(trained[i], fp32[i], 0.01 * fp32[i]) << "step " << i + 1;
}

TEST(HotSwap, TheBuiltInGemmsPrecisionIsCheckedBeforeTheJobIsTouched) {
  auto job = start_job("builtin-precision", "--set model.precision=fp8");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();

  // bf16 is the GPU's (as model.precision = "bf16" is): tiny's stage is on the CPU.
  const run_result bf16 = job.ctl("swap --plugin gemm --builtin bf16");
  EXPECT_EQ(bf16.exit_code, 1) << bf16.output;
  EXPECT_THAT(
      bf16.output,
      HasSubstr("stage 0 is on the CPU, but the built-in bf16 GEMM computes on a GPU's "
                "tensor cores and the CPU has no BF16 path: swap to the built-in fp32 "
                "GEMM (\"builtin\": \"fp32\", troupe ctl --builtin fp32) or a GEMM plugin"));
  const run_result attention = job.ctl("swap --plugin attention --builtin bf16");
  EXPECT_EQ(attention.exit_code, 1) << attention.output;
  EXPECT_THAT(attention.output,
              HasSubstr("only the gemm role has a built-in implementation (fp32 or bf16)"));
  // A precision of neither: ctl refuses it, and so does the job from any other client.
  const run_result fp16 = job.ctl("swap --plugin gemm --builtin fp16");
  EXPECT_EQ(fp16.exit_code, 1) << fp16.output;
  EXPECT_THAT(fp16.output, HasSubstr("--builtin: fp16 not in {fp32,bf16}"));
  const troupe::job_handle handle = troupe::find_job("builtin-precision", job.dir() / "run");
  auto swap_request = [&](const std::string& builtin) {
    const troupe::http_response reply =
        troupe::http_call(handle.record.url, "POST", "/v1/swap", handle.token,
                          R"({"plugin": "gemm", "builtin": )" + builtin + "}", 30);
    EXPECT_EQ(reply.status, 400) << builtin << ": " << reply.body;
    return nlohmann::json::parse(reply.body).value("error", std::string());
  };
  for (const std::string value : {R"("fp16")", "1", R"(["bf16"])"})
    EXPECT_THAT(swap_request(value),
                HasSubstr(R"(the swap request: "builtin" (the built-in GEMM's precision) must be )"
                          R"(true, "fp32" or "bf16", got )" +
                          value));
  EXPECT_THAT(swap_request("false"), HasSubstr("give either"));
  auto status = job.status();
  EXPECT_EQ(status.at("plugins").at("gemm").at("plugin"), "fp8");
  EXPECT_EQ(status.at("swaps").size(), 0u) << "refused before the step boundary";

  // Said in full, fp32 is what `--builtin` alone is.
  const run_result fp32 = job.ctl("swap --plugin gemm --builtin fp32");
  ASSERT_EQ(fp32.exit_code, 0) << fp32.output << job.log();
  EXPECT_THAT(fp32.output, HasSubstr("fp8 1.0.0 -> builtin fp32"));
  status = job.status();
  EXPECT_EQ(status.at("plugins").at("gemm"),
            (nlohmann::json{{"plugin", "builtin"}, {"version", "fp32"}, {"generation", 0}}));
  ASSERT_EQ(status.at("swaps").size(), 1u);
  EXPECT_EQ(status.at("swaps")[0].at("to").at("version"), "fp32");
  const std::string metrics =
      troupe::testing::run_command("curl -s " + status.at("metrics_url").get<std::string>()).output;
  EXPECT_THAT(metrics, HasSubstr(R"(plugin="builtin",role="gemm",version="fp32")"));

  EXPECT_EQ(job.finish(), 0) << job.log();
  EXPECT_THAT(job.log(), HasSubstr("-> the built-in FP32 GEMM"));
  const auto trained = losses_of(job);
  ASSERT_EQ(trained.size(), static_cast<std::size_t>(steps));
  for (double loss : trained) EXPECT_TRUE(std::isfinite(loss));
}

TEST(HotSwap, AcrossProcessesEveryHolderSwapsAndNoLossChanges) {
  // troupe launch: two processes, each loading the library itself and switching its own GEMM.
  const std::string topology =
      (fs::path(std::getenv("TROUPE_SOURCE_DIR")) / "topologies/two-hosts.toml").string();
  const std::string common = "--steps 4 --threads 1 --quiet";
  const fs::path reference = troupe::testing::scratch_dir("control", "two-hosts-untouched");
  const run_result untouched = troupe::testing::run_command(
      fmt::format("{} train {} {} --log-json {} --checkpoint-dir {}", exe(), topology, common,
                  (reference / "steps.jsonl").string(), (reference / "checkpoints").string()));
  ASSERT_EQ(untouched.exit_code, 0) << untouched.output;

  const fs::path dir = troupe::testing::scratch_dir("control", "two-hosts");
  troupe::testing::controlled_job job(
      dir, "two-hosts",
      fmt::format("{} {} --pause-after 2 --log-json {} --checkpoint-dir {}", topology, common,
                  (dir / "steps.jsonl").string(), (dir / "checkpoints").string()),
      "launch");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  EXPECT_EQ(job.status().at("processes"), 2);
  const fs::path moe = build_dir() / "plugins/moe/libtroupe-moe.so";
  const run_result swap = job.ctl("swap --plugin moe --library " + moe.string());
  ASSERT_EQ(swap.exit_code, 0) << swap.output << job.log();
  const run_result gemm = job.ctl("swap --plugin gemm --builtin --json");
  ASSERT_EQ(gemm.exit_code, 0) << gemm.output << job.log();
  EXPECT_EQ(nlohmann::json::parse(gemm.output).at("instances"), 2) << "one provider per process";
  const run_result broken =
      job.ctl("swap --plugin moe --library " + test_plugin("broken-not-elf").string());
  EXPECT_EQ(broken.exit_code, 1) << broken.output;

  EXPECT_EQ(job.finish(), 0) << job.log();
  const auto swapped = losses_of(job);
  const auto expected = losses(reference / "steps.jsonl");
  ASSERT_EQ(swapped.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(swapped[i], expected[i], 1e-6 * expected[i]) << "step " << i + 1;
}

TEST(HotSwap, TheControlAddressMustBeLoopbackAndPauseNeedsIt) {
  const fs::path dir = troupe::testing::scratch_dir("control", "addresses");
  const run_result wide = troupe::testing::run_command(
      exe() + " train " + train_arguments(dir, "--set control.listen=0.0.0.0:0"));
  EXPECT_EQ(wide.exit_code, 1);
  EXPECT_THAT(wide.output, HasSubstr("control.listen = \"0.0.0.0:0\": the control endpoint "
                                     "listens on a loopback address only"));
  EXPECT_THAT(wide.output, HasSubstr("tiny.toml"));
  const run_result off = troupe::testing::run_command(
      exe() + " train " + train_arguments(dir, "--set control.listen= --pause-after 1"));
  EXPECT_EQ(off.exit_code, 1);
  EXPECT_THAT(off.output, HasSubstr("needs the control endpoint"));
}

}  // namespace
