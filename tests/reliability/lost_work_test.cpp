// No fault loses work: what can be checked before step 1 is (the checkpoint directory, the
// resume checkpoint's every tensor), a log that cannot be written stops the job with its
// checkpoint, a second SIGTERM does not abandon the checkpoint, SIGHUP stops like SIGTERM,
// unfinished checkpoints are cleaned up, and a lost rank 0 under `troupe launch` exits 5 with a
// resume hint.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/checkpoint/safetensors.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;

using troupe::testing::background_command;
using troupe::testing::eventually;
using troupe::testing::run_result;

std::string exe() {
  const char* path = std::getenv("TROUPE_EXE");
  if (path == nullptr) throw std::runtime_error("TROUPE_EXE is not set (run through meson test)");
  return path;
}

std::string tiny() {
  return (troupe::testing::source_dir() / "topologies/tiny.toml").string();
}

/// `troupe train` of the tiny topology with `arguments`, in `dir` (its job files there too).
run_result train(const fs::path& dir, const std::string& arguments) {
  return troupe::testing::run_command(
      fmt::format("cd '{}' && TROUPE_RUN_DIR='{}' timeout -s KILL 120 {} train {} --quiet {}",
                  dir.string(), (dir / "run").string(), exe(), tiny(), arguments));
}

void expect_in(const run_result& r, const std::string& part) {
  EXPECT_NE(r.output.find(part), std::string::npos) << "'" << part << "' not in:\n" << r.output;
}

/// A two-step checkpoint of the tiny model under `dir`/ck; its step directory.
fs::path two_step_checkpoint(const fs::path& dir) {
  const run_result r = train(dir, "--steps 2 --checkpoint-dir ck");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return dir / "ck/step-000002";
}

/// Rewrites the tensors of `file` with `change` applied to tensor `name`.
template <class Change>
void rewrite_tensor(const fs::path& model_dir, const fs::path& file, const std::string& name,
                    Change change) {
  const auto checkpoint = troupe::hf_checkpoint::open(model_dir);
  std::vector<std::pair<std::string, troupe::tensor>> tensors;
  const auto contents = troupe::safetensors_file::open(file);
  for (const auto& entry : contents.entries()) {
    troupe::tensor value = checkpoint.read_f32(entry.name);
    if (entry.name == name) value = change(value);
    tensors.emplace_back(entry.name, value);
  }
  troupe::write_safetensors(file, tensors, {{"format", "pt"}});
}

TEST(LostWork, ACheckpointDirectoryThatCannotBeWrittenFailsBeforeStepOne) {
  const fs::path dir = troupe::testing::scratch_dir("reliability", "dev-null");
  const run_result r = train(dir, "--steps 3 --checkpoint-dir /dev/null");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, "/dev/null");
  EXPECT_EQ(r.output.find("steps 1-"), std::string::npos) << r.output;
}

TEST(LostWork, ALogThatCannotBeWrittenStopsTheJobWithItsCheckpoint) {
  const fs::path dir = troupe::testing::scratch_dir("reliability", "dev-full");
  const run_result r = train(dir, "--steps 20 --checkpoint-dir ck --log-json /dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, "--log-json: cannot write /dev/full");
  expect_in(r, "No space left on device");
  EXPECT_TRUE(fs::exists(dir / "ck/latest")) << r.output;
}

TEST(LostWork, UnfinishedCheckpointsOfAnEarlierRunAreRemoved) {
  const fs::path dir = troupe::testing::scratch_dir("reliability", "partials");
  fs::create_directories(dir / "ck/step-000007.partial/optimizer");
  std::ofstream(dir / "ck/step-000007.partial/big") << std::string(1 << 16, 'x');
  const run_result r = train(dir, "--steps 1 --checkpoint-dir ck");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_in(r, "removed 1 unfinished checkpoint");
  EXPECT_FALSE(fs::exists(dir / "ck/step-000007.partial"));
  EXPECT_TRUE(fs::exists(dir / "ck/step-000001"));
}

TEST(LostWork, EveryTensorOfAResumeCheckpointIsCheckedBeforeStepOne) {
  const fs::path dir = troupe::testing::scratch_dir("reliability", "resume-tensors");
  const fs::path step = two_step_checkpoint(dir);
  const std::string name = "model.layers.0.self_attn.kv_a_layernorm.weight";
  const auto nan = std::numeric_limits<float>::quiet_NaN();

  // A NaN in the EMA.
  fs::copy(step, dir / "nan-ema", fs::copy_options::recursive);
  rewrite_tensor(dir / "nan-ema/ema", dir / "nan-ema/ema/model.safetensors", name,
                 [&](troupe::tensor t) {
                   t.data_as<float>()[3] = nan;
                   return t;
                 });
  run_result r = train(dir, "--steps 4 --checkpoint-dir ck2 --resume nan-ema");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, "ema");
  expect_in(r, name);
  expect_in(r, "non-finite");

  // A wrong-shaped EMA tensor.
  fs::copy(step, dir / "shape-ema", fs::copy_options::recursive);
  rewrite_tensor(
      dir / "shape-ema/ema", dir / "shape-ema/ema/model.safetensors", name,
      [](const troupe::tensor&) { return troupe::tensor::empty(troupe::dtype::f32, {3}); });
  r = train(dir, "--steps 4 --checkpoint-dir ck2 --resume shape-ema");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, name);
  expect_in(r, "[3]");

  // A router bias of 1e38.
  fs::copy(step, dir / "bias", fs::copy_options::recursive);
  const std::string bias = "model.layers.1.mlp.gate.e_score_correction_bias";
  const auto index = troupe::testing::read_json(dir / "bias/model.safetensors.index.json");
  const std::string file = index["weight_map"][bias];
  rewrite_tensor(dir / "bias", dir / "bias" / file, bias, [](troupe::tensor t) {
    t.data_as<float>()[0] = 1e38f;
    return t;
  });
  r = train(dir, "--steps 4 --checkpoint-dir ck2 --resume bias");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, bias);

  // An epoch at the data stream's "none yet" marker.
  fs::copy(step, dir / "epoch", fs::copy_options::recursive);
  auto state = troupe::testing::read_json(dir / "epoch/trainer_state.json");
  state["data_position"]["epoch"] = std::numeric_limits<std::uint64_t>::max();
  std::ofstream(dir / "epoch/trainer_state.json") << state.dump();
  r = train(dir, "--steps 4 --checkpoint-dir ck2 --resume epoch");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, "trainer_state.json");
  expect_in(r, "epoch");

  // An expert placement that is no list of lists of expert numbers.
  fs::copy(step, dir / "placement", fs::copy_options::recursive);
  state = troupe::testing::read_json(dir / "placement/trainer_state.json");
  state["expert_placement"] = {{"1", {{0, 1}, {"two", 3}}}};
  std::ofstream(dir / "placement/trainer_state.json") << state.dump();
  r = train(dir, "--steps 4 --checkpoint-dir ck2 --resume placement");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, "trainer_state.json");
  expect_in(r, "expert_placement.1");

  // A checkpoint of another model: the same shapes, another RoPE base.
  std::string config = [] {
    std::ifstream in(troupe::testing::source_dir() / "topologies/models/tiny/config.json");
    return std::string{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }();
  config.replace(config.find("10000.0"), 7, "20000.0");
  std::ofstream(dir / "other.json") << config;
  r = train(dir, fmt::format("--steps 4 --checkpoint-dir ck2 --resume '{}' --set "
                             "model.config='{}'",
                             step.string(), (dir / "other.json").string()));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  expect_in(r, "rope_theta");
  EXPECT_FALSE(fs::exists(dir / "ck2/latest"));
}

/// A background `troupe train` of many steps in `dir`; waits until it has logged a step.
struct running_training {
  fs::path dir;
  background_command command;
  running_training(const fs::path& d, const std::string& arguments)
      : dir(d),
        command(fmt::format("env TROUPE_RUN_DIR='{}' {} train {} --quiet --steps 100000 "
                            "--checkpoint-dir '{}' --log-json '{}' {}",
                            (d / "run").string(), exe(), tiny(), (d / "ck").string(),
                            (d / "log.json").string(), arguments),
                d / "out.txt") {
    EXPECT_TRUE(
        eventually(60, [&] { return !troupe::testing::read_json_lines(d / "log.json").empty(); }));
  }
  std::string output() const {
    std::ifstream in(dir / "out.txt");
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
};

TEST(LostWork, ASecondSigtermDoesNotAbandonTheCheckpoint) {
  running_training job(troupe::testing::scratch_dir("reliability", "two-sigterms"), "");
  ::kill(job.command.pid(), SIGTERM);
  ::usleep(100'000);  // two signals sent at once merge into one
  ::kill(job.command.pid(), SIGTERM);
  EXPECT_EQ(job.command.wait(), 3) << job.output();
  EXPECT_TRUE(fs::exists(job.dir / "ck/latest")) << job.output();
  EXPECT_NE(job.output().find("already stopping"), std::string::npos) << job.output();
}

TEST(LostWork, SighupStopsTheJobLikeSigterm) {
  running_training job(troupe::testing::scratch_dir("reliability", "sighup"), "");
  ::kill(job.command.pid(), SIGHUP);
  EXPECT_EQ(job.command.wait(), 3) << job.output();
  EXPECT_TRUE(fs::exists(job.dir / "ck/latest")) << job.output();
}

TEST(LostWork, AKilledRankZeroUnderLaunchExitsFiveWithAResumeHint) {
  const fs::path dir = troupe::testing::scratch_dir("reliability", "launch-kill");
  const std::string two_hosts =
      (troupe::testing::source_dir() / "topologies/two-hosts.toml").string();
  background_command launch(
      fmt::format("env TROUPE_RUN_DIR='{}' {} launch {} --quiet --steps 100000 --checkpoint-dir "
                  "'{}' --log-json '{}'",
                  (dir / "run").string(), exe(), two_hosts, (dir / "ck").string(),
                  (dir / "log.json").string()),
      dir / "out.txt");
  ASSERT_TRUE(
      eventually(90, [&] { return !troupe::testing::read_json_lines(dir / "log.json").empty(); }));
  // Rank 0 is the launcher's first child.
  const run_result children =
      troupe::testing::run_command(fmt::format("pgrep -o -P {}", launch.pid()));
  const pid_t rank0 = std::atoi(children.output.c_str());
  ASSERT_GT(rank0, 0) << children.output;
  ::kill(rank0, SIGKILL);
  EXPECT_EQ(launch.wait(), 5);
  std::ifstream in(dir / "out.txt");
  const std::string output{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  EXPECT_NE(output.find("rank 0"), std::string::npos) << output;
  EXPECT_NE(output.find("--resume " + (dir / "ck").string()), std::string::npos) << output;
}

}  // namespace
