// `troupe train --resume` and hot swaps with tiny's stage on cuda:0, driven as a user does
// (troupe train, troupe ctl). Every run here is the same job, 6 steps of tiny in FP32 with a
// checkpoint after step 3 and a control endpoint, until a test changes one thing: resumed from
// that checkpoint, steps 4-6 have the uninterrupted run's losses; the moe plugin swapped for an
// identical build after step 3 changes no loss; FP8 GEMMs swapped after step 3 for the runtime's
// FP32 or BF16 GEMM keep training, within FP8's 2% of the FP32 run. Tiny has a rope head of 16
// throughout (tiny_config_for_fp8), so the FP32 run is the FP8 runs' reference too.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/gpu/gpu_skip.hpp"
#include "tests/gpu/tiny_topology.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/controlled_job.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::run_result;

constexpr int steps = 6;
/// The step after which the reference run checkpoints, resumed runs start and swaps happen.
constexpr int middle = 3;
/// How far a resumed or identically swapped run's loss, MTP loss and gradient norm may be from the
/// uninterrupted run's, relative, in FP32. On the CPU they are bit-identical (train_test.cpp).
/// The GPU kernels of these FP32 runs are meant to be deterministic too (the only atomics are the
/// router's integer counts; on an H200 these runs were bit-identical; under bf16, cuDNN's
/// attention backward adds with atomics), but nothing promises that cuBLASLt picks the
/// same algorithm in another process, and an FP32 sum in another order differs by a few ulps
/// (1e-7 relative) per reduction, which 3 steps leave far below 1e-5. A resume that loses state
/// (AdamW moments, router biases, the data position), or a swap that drops it, moves the losses
/// by orders of magnitude more.
constexpr double same_loss_tolerance = 1e-5;
/// FP8 GEMMs for steps 1-3 (the weights keep what they learnt), then FP32 or BF16: the losses of
/// steps 4-6 within FP8's bar, 2% of the FP32 run's (TrainingOnCuda's FP8 bar after 50 steps).
constexpr double fp8_tolerance = 0.02;

/// Where the jobs place their stage.
const std::string gpu = "cuda:0";

/// This process's scratch root, removed when the suite ends.
fs::path scratch_root() {
  return fs::temp_directory_path() / ("troupe-gpu-resume-swap-" + std::to_string(::getpid()));
}

class remove_scratch : public ::testing::Environment {
 public:
  void TearDown() override { fs::remove_all(scratch_root()); }
};
[[maybe_unused]] const auto* const scratch_cleanup =
    ::testing::AddGlobalTestEnvironment(new remove_scratch);

/// An empty directory `name` under the scratch root (a device's colon becomes a dash).
fs::path scratch(std::string name) {
  std::replace(name.begin(), name.end(), ':', '-');
  const fs::path dir = scratch_root() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// Writes the job's topology into `dir` (tiny on `device` in `precision`, 6 steps, a checkpoint
/// after step 3, a control endpoint) and returns `troupe train`'s arguments for it, with `extra`.
std::string train_arguments(const fs::path& dir, const std::string& device,
                            const std::string& precision, const std::string& extra = "") {
  troupe::testing::tiny_run run;
  run.device = device;
  run.precision = precision;
  run.steps = steps;
  run.config = troupe::testing::tiny_config_for_fp8(dir);
  run.checkpoint_every = middle;
  run.control = true;
  const fs::path topology = dir / "tiny.toml";
  std::ofstream(topology) << troupe::testing::tiny_topology(run);
  return fmt::format("{} --quiet --log-json {} --checkpoint-dir {} {}", topology.string(),
                     (dir / "steps.jsonl").string(), (dir / "checkpoints").string(), extra);
}

/// `troupe train` in the foreground, its control endpoint's files under `dir`/run.
run_result train(const fs::path& dir, const std::string& arguments) {
  return troupe::testing::run_command(fmt::format("env TROUPE_RUN_DIR={} {} train {}",
                                                  (dir / "run").string(),
                                                  troupe::testing::troupe_exe(), arguments));
}

struct reference_run {
  fs::path dir;
  std::vector<nlohmann::json> log;
};

/// The FP32 job nobody touches, on `device` (run once).
const reference_run& uninterrupted(const std::string& device) {
  static std::map<std::string, reference_run> runs;
  auto [it, fresh] = runs.try_emplace(device);
  if (fresh) {
    it->second.dir = scratch("uninterrupted-" + device);
    const run_result r = train(it->second.dir, train_arguments(it->second.dir, device, "fp32"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    it->second.log = troupe::testing::read_json_lines(it->second.dir / "steps.jsonl");
  }
  return it->second;
}

/// The relative difference of a step's `key` in `got` from `expected`; fails the test past
/// `tolerance`.
double compare(const nlohmann::json& got, const nlohmann::json& expected, const char* key,
               double tolerance, const std::string& what) {
  const double a = got.at(key).get<double>(), b = expected.at(key).get<double>();
  const double difference = std::fabs(a - b) / std::fabs(b);
  EXPECT_LE(difference, tolerance)
      << what << ", step " << expected.at("step") << " " << key << ": " << a << " instead of " << b;
  return difference;
}

/// Loss, MTP loss and gradient norm of every step of `got` against the same steps of `expected`
/// within `same_loss_tolerance`; the worst relative difference.
double expect_same_losses(const std::vector<nlohmann::json>& got,
                          const std::vector<nlohmann::json>& expected, const std::string& what) {
  double worst = 0.0;
  for (const auto& step : got) {
    const auto number = step.at("step").get<std::size_t>();
    if (number < 1 || number > expected.size()) {
      ADD_FAILURE() << what << ": step " << number << " is not in the reference run";
      continue;
    }
    for (const char* key : {"loss", "mtp_loss", "grad_norm"})
      worst = std::max(worst, compare(step, expected[number - 1], key, same_loss_tolerance, what));
  }
  return worst;
}

/// The moe plugin troupe loads: in the build tree (TROUPE_BUILD_DIR, else the working directory,
/// as meson runs the suite) or, for an installed troupe (TROUPE_EXE, as tools/gpu_pack.sh packs
/// it for the GPU machine), in its plugin directory.
fs::path moe_plugin() {
  std::vector<fs::path> candidates;
  if (const char* dir = std::getenv("TROUPE_BUILD_DIR"))
    candidates.push_back(fs::path(dir) / "plugins/moe/libtroupe-moe.so");
  candidates.push_back(fs::current_path() / "plugins/moe/libtroupe-moe.so");
  if (const char* exe = std::getenv("TROUPE_EXE")) {
    const fs::path lib = fs::path(exe).parent_path().parent_path() / "lib";
    candidates.push_back(lib / "troupe/plugins/libtroupe-moe.so");
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(lib, ec))
      candidates.push_back(entry.path() / "troupe/plugins/libtroupe-moe.so");
  }
  for (const fs::path& candidate : candidates)
    if (fs::exists(candidate)) return candidate;
  return candidates.front();
}

#define SKIP_WITHOUT_GPU_OR_TROUPE()                                                   \
  do {                                                                                 \
    TROUPE_SKIP_WITHOUT_GPU();                                                         \
    if (std::getenv("TROUPE_EXE") == nullptr) GTEST_SKIP() << "TROUPE_EXE is not set"; \
  } while (false)

/// Resume from the checkpoint after step 3 of the reference run: steps 4-6 again.
void resume_continues_with_the_same_losses(const std::string& device) {
  const reference_run& whole = uninterrupted(device);
  ASSERT_EQ(whole.log.size(), static_cast<std::size_t>(steps));
  const fs::path checkpoint = whole.dir / "checkpoints" / fmt::format("step-{:06}", middle);
  ASSERT_TRUE(fs::exists(checkpoint / "trainer_state.json")) << checkpoint;

  const fs::path dir = scratch("resumed-" + device);
  const run_result r =
      train(dir, train_arguments(dir, device, "fp32", "--resume " + checkpoint.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto resumed = troupe::testing::read_json_lines(dir / "steps.jsonl");
  ASSERT_EQ(resumed.size(), static_cast<std::size_t>(steps - middle)) << r.output;
  for (std::size_t i = 0; i < resumed.size(); ++i)
    EXPECT_EQ(resumed[i].at("step"), middle + 1 + static_cast<int>(i));
  const double worst = expect_same_losses(resumed, whole.log, "resumed on " + device);
  // Step 4's forward starts from the checkpointed weights and router biases in both runs.
  EXPECT_EQ(resumed.front().at("expert_load"), whole.log[middle].at("expert_load"));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / fmt::format("step-{:06}", steps)));
  std::printf(
      "[ resume on %s ] steps %d-%d resumed from step %d: loss %.6f -> %.6f, worst relative "
      "difference from the uninterrupted run %.3g (tolerance %.0e)\n",
      device.c_str(), middle + 1, steps, middle, resumed.front().at("loss").get<double>(),
      resumed.back().at("loss").get<double>(), worst, same_loss_tolerance);
}

/// The moe plugin swapped for an identical build after step 3.
void identical_moe_changes_no_loss(const std::string& device) {
  const reference_run& untouched = uninterrupted(device);
  ASSERT_EQ(untouched.log.size(), static_cast<std::size_t>(steps));
  const fs::path dir = scratch("identical-moe-" + device);
  troupe::testing::controlled_job job(
      dir, "identical-moe",
      train_arguments(dir, device, "fp32", fmt::format("--pause-after {}", middle)));
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  const auto before = job.status();
  EXPECT_EQ(before.at("step"), middle);
  EXPECT_EQ(before.at("plugins").at("moe").at("generation"), 1);

  const fs::path moe = moe_plugin();
  const run_result swap = job.ctl("swap --plugin moe --library " + moe.string());
  ASSERT_EQ(swap.exit_code, 0) << swap.output << job.log();
  EXPECT_THAT(swap.output, HasSubstr(fmt::format("swapped the moe plugin after step {}", middle)));
  EXPECT_THAT(swap.output, HasSubstr("(generation 2)"));
  const auto after = job.status();
  EXPECT_EQ(after.at("plugins").at("moe").at("generation"), 2);
  ASSERT_EQ(after.at("swaps").size(), 1u);
  EXPECT_EQ(after.at("swaps")[0].at("outcome"), "swapped");
  EXPECT_GT(after.at("swaps")[0].at("instances").get<int>(), 0);

  ASSERT_EQ(job.finish(), 0) << job.log();
  const auto swapped = troupe::testing::read_json_lines(dir / "steps.jsonl");
  ASSERT_EQ(swapped.size(), static_cast<std::size_t>(steps)) << job.log();
  const double worst =
      expect_same_losses(swapped, untouched.log, "the moe plugin swapped on " + device);
  std::printf(
      "[ moe swap on %s ] an identical build after step %d: worst relative difference from the "
      "untouched run %.3g (tolerance %.0e)\n",
      device.c_str(), middle, worst, same_loss_tolerance);
}

/// A job in FP8 whose GEMMs are swapped after step 3 by `troupe ctl JOB swap --plugin gemm
/// SWAP`; the swap's output must say `expected_change`, and the gemm role then runs `serving`
/// (status: plugin "builtin", version `serving`).
void fp8_swapped_keeps_training(const std::string& device, const std::string& name,
                                const std::string& swap_arguments,
                                const std::string& expected_change, const std::string& serving) {
  const reference_run& fp32 = uninterrupted(device);
  ASSERT_EQ(fp32.log.size(), static_cast<std::size_t>(steps));
  const fs::path dir = scratch(name + "-" + device);
  troupe::testing::controlled_job job(
      dir, name, train_arguments(dir, device, "fp8", fmt::format("--pause-after {}", middle)));
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  EXPECT_EQ(job.status().at("plugins").at("gemm").at("plugin"), "fp8");

  const run_result swap = job.ctl("swap --plugin gemm " + swap_arguments);
  ASSERT_EQ(swap.exit_code, 0) << "troupe ctl " << name << " swap --plugin gemm " << swap_arguments
                               << ":\n"
                               << swap.output << job.log();
  EXPECT_THAT(swap.output, HasSubstr(expected_change));
  const auto gemm = job.status().at("plugins").at("gemm");
  EXPECT_EQ(gemm.at("plugin"), "builtin");
  EXPECT_EQ(gemm.at("version"), serving);

  ASSERT_EQ(job.finish(), 0) << job.log();
  const auto trained = troupe::testing::read_json_lines(dir / "steps.jsonl");
  ASSERT_EQ(trained.size(), static_cast<std::size_t>(steps)) << job.log();
  double worst = 0.0;
  for (const auto& step : trained) {
    for (const char* key : {"loss", "mtp_loss", "grad_norm"})
      EXPECT_TRUE(std::isfinite(step.at(key).get<double>()))
          << "step " << step.at("step") << " " << key;
    if (step.at("step").get<int>() > middle)
      worst = std::max(worst, compare(step, fp32.log[step.at("step").get<std::size_t>() - 1],
                                      "loss", fp8_tolerance, "FP8, then " + serving));
  }
  // Training goes on: the loss falls past the swap as it fell before it.
  const double first = trained.front().at("loss").get<double>();
  const double at_swap = trained[middle - 1].at("loss").get<double>();
  const double last = trained.back().at("loss").get<double>();
  EXPECT_LT(at_swap, first);
  EXPECT_LT(last, at_swap) << "the loss stopped falling after the swap to " << serving;
  std::printf(
      "[ gemm swap on %s ] FP8 for steps 1-%d, then %s: loss %.5f -> %.5f -> %.5f, worst "
      "relative difference from FP32 after the swap %.3g (bound %.0e)\n",
      device.c_str(), middle, serving.c_str(), first, at_swap, last, worst, fp8_tolerance);
}

TEST(ResumeOnCuda, StepsAfterTheCheckpointHaveTheUninterruptedLosses) {
  SKIP_WITHOUT_GPU_OR_TROUPE();
  resume_continues_with_the_same_losses(gpu);
}

TEST(HotSwapOnCuda, AnIdenticalMoeBuildChangesNoLoss) {
  SKIP_WITHOUT_GPU_OR_TROUPE();
  identical_moe_changes_no_loss(gpu);
}

TEST(HotSwapOnCuda, Fp8GemmsSwappedForTheBuiltInFp32KeepTraining) {
  SKIP_WITHOUT_GPU_OR_TROUPE();
  fp8_swapped_keeps_training(gpu, "fp8-to-fp32", "--builtin", "fp8 1.0.0 -> builtin fp32", "fp32");
}

// FP8 -> BF16, the GEMMs of model.precision = "bf16" (cuBLASLt on the tensor cores). Asked for
// as `--builtin bf16`: the runtime's own GEMM in BF16, as `--builtin` alone is its FP32 one.
TEST(HotSwapOnCuda, Fp8GemmsSwappedForTheBuiltInBf16KeepTraining) {
  SKIP_WITHOUT_GPU_OR_TROUPE();
  fp8_swapped_keeps_training(gpu, "fp8-to-bf16", "--builtin bf16", "fp8 1.0.0 -> builtin bf16",
                             "bf16");
}

}  // namespace
