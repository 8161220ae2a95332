// `troupe ctl JOB rebalance` in a running `troupe train` (the default topology: two expert
// shards), as a user drives it: the routed experts are re-placed on the shards for the load the
// job observed (or a load file), their weights and AdamW moments move with them, and the losses
// stay within 1e-6 (relative) of a job nobody touched. Loads that do not fit the model are
// refused with the reason and change nothing; the placement and each move show in the status
// and in Prometheus. Across two processes (`troupe launch two-hosts.toml`: two shards on each)
// experts move between hosts, over UCX, as well; and under DualPipe, whose two copies of every
// stage each send the shards their rows. A checkpoint keeps the placement: a resumed job starts
// where the experts were.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"
#include "tests/support/controlled_job.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::run_result;

constexpr int steps = 5;

std::string train_arguments(const fs::path& dir, const std::string& extra = "") {
  return fmt::format("--steps {} --threads 2 --quiet --log-json {} --no-checkpoint {}", steps,
                     (dir / "steps.jsonl").string(), extra);
}

std::vector<double> losses(const fs::path& log) {
  std::vector<double> out;
  for (const auto& record : troupe::testing::read_json_lines(log))
    out.push_back(record.at("loss").get<double>());
  return out;
}

void write(const fs::path& file, const std::string& text) {
  std::ofstream(file) << text;
}

/// A load file where experts 0-7 of every MoE layer (1-4) carry almost every token.
fs::path skewed_load(const fs::path& dir) {
  std::string rows;
  for (int layer = 1; layer <= 4; ++layer)
    rows += fmt::format("{}\"{}\": [90, 80, 70, 60, 50, 40, 30, 20, 1, 1, 1, 1, 1, 1, 1, 1]",
                        layer == 1 ? "" : ", ", layer);
  write(dir / "skewed.json", "{" + rows + "}");
  return dir / "skewed.json";
}

/// The losses of `log` equal those of `reference` within 1e-6 (relative), step by step.
void expect_same_losses(const fs::path& log, const fs::path& reference) {
  const auto moved = losses(log), expected = losses(reference);
  ASSERT_EQ(moved.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_NEAR(moved[i], expected[i], 1e-6 * std::fabs(expected[i])) << "step " << i + 1;
}

TEST(Rebalance, ExpertsMoveWithTheirOptimizerStateAndNoLossChanges) {
  const fs::path dir = troupe::testing::scratch_dir("control", "rebalance");
  troupe::testing::controlled_job job(dir, "rebalance", train_arguments(dir, "--pause-after 2"));
  ASSERT_TRUE(job.wait_until_paused()) << job.log();

  // Loads that do not fit the model: refused before anything moves.
  std::string two_rows;
  for (int e = 0; e < 16; ++e) two_rows += e == 0 ? "1" : ", 1";
  write(dir / "short.json", "[[" + two_rows + "], [" + two_rows + "]]");
  run_result r = job.ctl("rebalance --load " + (dir / "short.json").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output,
              HasSubstr("the load's layers (2) are not the model's MoE layers (1, 2, 3, 4)"));
  write(dir / "narrow.json", R"({"1": [1, 2], "2": [1, 2], "3": [1, 2], "4": [1, 2]})");
  r = job.ctl("rebalance --load " + (dir / "narrow.json").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("load of layer 1 must list 16 numbers"));
  // Straight to the endpoint (troupe ctl's reader would sum the two rows).
  const auto post = [&](const std::string& body) {
    write(dir / "body.json", body);
    return troupe::testing::run_command(fmt::format(
        "curl -s -X POST -H \"Authorization: Bearer $(cat {})\" --data-binary @{} {}/v1/rebalance",
        (dir / "run" / "rebalance" / "token").string(), (dir / "body.json").string(),
        job.control_url()));
  };
  EXPECT_THAT(post(R"({"load": {"3": [)" + two_rows + R"(], "03": [)" + two_rows + "]}}").output,
              HasSubstr("layer 3 is given twice"));
  EXPECT_THAT(post(R"({"load": {}})").output, HasSubstr("holds no layer"));
  EXPECT_THAT(post(R"({"load": "hot"})").output, HasSubstr("must map MoE layers to loads"));
  r = job.ctl("rebalance --load " + (dir / "missing.json").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("missing.json"));
  EXPECT_TRUE(job.status().at("rebalances").empty());

  // The load observed in steps 1-2.
  r = job.ctl("rebalance --json");
  ASSERT_EQ(r.exit_code, 0) << r.output << job.log();
  const nlohmann::json observed = nlohmann::json::parse(r.output);
  EXPECT_EQ(observed.at("step"), 2);
  EXPECT_GT(observed.at("moved").get<int>(), 0);
  EXPECT_GT(observed.at("bytes").get<long>(), 0);
  for (const auto& [layer, l] : observed.at("layers").items()) {
    EXPECT_LE(l.at("after").get<double>(), l.at("before").get<double>()) << layer;
    EXPECT_EQ(l.at("shards").size(), 2u);
  }

  // A load file where experts 0-7 carry everything: each shard gets four of them.
  r = job.ctl("rebalance --load " + skewed_load(dir).string());
  ASSERT_EQ(r.exit_code, 0) << r.output << job.log();
  EXPECT_THAT(r.output, HasSubstr("rebalanced the experts after step 2"));
  EXPECT_THAT(r.output, HasSubstr("layer 1: largest shard load / mean"));
  const nlohmann::json status = job.status();
  ASSERT_EQ(status.at("rebalances").size(), 2u);
  for (const auto& [layer, l] : status.at("rebalances")[1].at("layers").items()) {
    int heavy_on_shard0 = 0;
    for (const auto& e : l.at("shards")[0]) heavy_on_shard0 += e.get<int>() < 8 ? 1 : 0;
    EXPECT_EQ(heavy_on_shard0, 4) << layer << ": " << l.dump();
    EXPECT_LT(l.at("after").get<double>(), 1.02) << layer;
  }

  // Prometheus: where each expert runs, and what moved.
  const std::string metrics =
      troupe::testing::run_command("curl -s " + status.at("metrics_url").get<std::string>()).output;
  EXPECT_THAT(metrics, HasSubstr("troupe_expert_shard{"));
  EXPECT_THAT(metrics, HasSubstr("troupe_expert_rebalances_total{outcome=\"moved\"} 2"));
  EXPECT_THAT(metrics, ::testing::ContainsRegex("troupe_experts_moved_total [1-9]"));
  EXPECT_THAT(metrics, ::testing::ContainsRegex("troupe_expert_rebalance_bytes_total [1-9]"));

  ASSERT_EQ(job.finish(), 0) << job.log();
  EXPECT_THAT(job.log(), HasSubstr("rebalanced the experts after step 2"));

  const fs::path alone = troupe::testing::scratch_dir("control", "rebalance-untouched");
  const run_result untouched = troupe::testing::run_command(troupe::testing::troupe_exe() +
                                                            " train " + train_arguments(alone));
  ASSERT_EQ(untouched.exit_code, 0) << untouched.output;
  expect_same_losses(dir / "steps.jsonl", alone / "steps.jsonl");
  // Steps 3-5 ran on the moved experts; they are not the same as steps 1-2.
  const auto moved = losses(dir / "steps.jsonl");
  EXPECT_NE(moved[2], moved[1]);
}

TEST(Rebalance, AResumedJobStartsWhereTheExpertsWere) {
  const fs::path dir = troupe::testing::scratch_dir("control", "rebalance-resume");
  troupe::testing::controlled_job job(
      dir, "rebalance-resume",
      fmt::format("--steps 3 --threads 2 --quiet --log-json {} --checkpoint-dir {} --pause-after 2",
                  (dir / "first.jsonl").string(), (dir / "ck").string()));
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  const run_result moved = job.ctl("rebalance --load " + skewed_load(dir).string());
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  ASSERT_EQ(job.finish(), 0) << job.log();
  const auto placement_of = [](const fs::path& checkpoint) {
    const auto state = nlohmann::json::parse(std::ifstream(checkpoint / "trainer_state.json"));
    return state.value("expert_placement", nlohmann::json());
  };
  const nlohmann::json saved = placement_of(dir / "ck" / "step-000003");
  ASSERT_TRUE(saved.is_object()) << "the checkpoint does not keep the placement";
  EXPECT_NE(saved.at("1").at(0), nlohmann::json::array({0, 1, 2, 3, 4, 5, 6, 7}))
      << "the rebalance moved nothing";

  // Resumed, the job starts from the moved placement and keeps it in its next checkpoint.
  const auto resume = [&](const fs::path& from, const std::string& name) {
    return troupe::testing::run_command(fmt::format(
        "{} train --steps 5 --threads 2 --quiet --log-json {} --resume {} --checkpoint-dir {}",
        troupe::testing::troupe_exe(), (dir / (name + ".jsonl")).string(), from.string(),
        (dir / name).string()));
  };
  const run_result kept = resume(dir / "ck", "kept");
  ASSERT_EQ(kept.exit_code, 0) << kept.output;
  EXPECT_THAT(kept.output, HasSubstr("the experts start where the checkpoint's job left them"));
  EXPECT_EQ(placement_of(dir / "kept" / "step-000005"), saved);

  // Without the placement (an older checkpoint) the experts start where the topology puts
  // them, and compute the same losses.
  fs::create_directories(dir / "old");
  fs::copy(dir / "ck" / "step-000003", dir / "old" / "step-000003", fs::copy_options::recursive);
  auto state =
      nlohmann::json::parse(std::ifstream(dir / "old" / "step-000003" / "trainer_state.json"));
  state.erase("expert_placement");
  write(dir / "old" / "step-000003" / "trainer_state.json", state.dump());
  const run_result topology = resume(dir / "old" / "step-000003", "topology");
  ASSERT_EQ(topology.exit_code, 0) << topology.output;
  EXPECT_THAT(topology.output, ::testing::Not(HasSubstr("the experts start where")));
  expect_same_losses(dir / "kept.jsonl", dir / "topology.jsonl");

  // A placement that does not fit (another number of shards) is reported and left out.
  state["expert_placement"] = {
      {"1", {{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}}}};
  write(dir / "old" / "step-000003" / "trainer_state.json", state.dump());
  const run_result misfit = resume(dir / "old" / "step-000003", "misfit");
  ASSERT_EQ(misfit.exit_code, 0) << misfit.output;
  EXPECT_THAT(misfit.output, HasSubstr("it has 4 expert shards, the topology 2"));
  expect_same_losses(dir / "misfit.jsonl", dir / "topology.jsonl");
}

TEST(Rebalance, ExpertsMoveBetweenProcesses) {
  const std::string topology =
      (fs::path(std::getenv("TROUPE_SOURCE_DIR")) / "topologies/two-hosts.toml").string();
  const std::string common = "--steps 4 --threads 1 --quiet --no-checkpoint";
  const fs::path reference = troupe::testing::scratch_dir("control", "rebalance-two-untouched");
  const run_result untouched = troupe::testing::run_command(
      fmt::format("{} train {} {} --log-json {}", troupe::testing::troupe_exe(), topology, common,
                  (reference / "steps.jsonl").string()));
  ASSERT_EQ(untouched.exit_code, 0) << untouched.output;

  const fs::path dir = troupe::testing::scratch_dir("control", "rebalance-two");
  troupe::testing::controlled_job job(dir, "rebalance-two",
                                      fmt::format("{} {} --pause-after 2 --log-json {}", topology,
                                                  common, (dir / "steps.jsonl").string()),
                                      "launch");
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  EXPECT_EQ(job.status().at("processes"), 2);
  // Experts 0-7 (on node0's shards 0 and 1) carry everything: half of them go to node1.
  const run_result r = job.ctl("rebalance --json --load " + skewed_load(dir).string());
  ASSERT_EQ(r.exit_code, 0) << r.output << job.log();
  const nlohmann::json reply = nlohmann::json::parse(r.output);
  EXPECT_GT(reply.at("moved").get<int>(), 0);
  for (const auto& [layer, l] : reply.at("layers").items()) {
    int heavy_on_node1 = 0;
    for (std::size_t shard = 2; shard < 4; ++shard)
      for (const auto& e : l.at("shards")[shard]) heavy_on_node1 += e.get<int>() < 8 ? 1 : 0;
    EXPECT_EQ(heavy_on_node1, 4) << layer << ": " << l.dump();
  }
  ASSERT_EQ(job.finish(), 0) << job.log();
  expect_same_losses(dir / "steps.jsonl", reference / "steps.jsonl");
}

TEST(Rebalance, UnderDualPipeBothCopiesOfEveryStageFollow) {
  // pp2-ep4 under DualPipe: every shard serves two copies of each stage (two gradient sources).
  const std::string arguments = fmt::format(
      "{} --set schedule.kind=dualpipe --steps 4 --threads 2 --quiet --no-checkpoint",
      (fs::path(std::getenv("TROUPE_SOURCE_DIR")) / "topologies/pp2-ep4.toml").string());
  const fs::path reference =
      troupe::testing::scratch_dir("control", "rebalance-dualpipe-untouched");
  const run_result untouched = troupe::testing::run_command(
      fmt::format("{} train {} --log-json {}", troupe::testing::troupe_exe(), arguments,
                  (reference / "steps.jsonl").string()));
  ASSERT_EQ(untouched.exit_code, 0) << untouched.output;
  const fs::path dir = troupe::testing::scratch_dir("control", "rebalance-dualpipe");
  troupe::testing::controlled_job job(
      dir, "rebalance-dualpipe",
      fmt::format("{} --pause-after 2 --log-json {}", arguments, (dir / "steps.jsonl").string()));
  ASSERT_TRUE(job.wait_until_paused()) << job.log();
  const run_result r = job.ctl("rebalance --json");
  ASSERT_EQ(r.exit_code, 0) << r.output << job.log();
  EXPECT_GT(nlohmann::json::parse(r.output).at("moved").get<int>(), 0);
  ASSERT_EQ(job.finish(), 0) << job.log();
  expect_same_losses(dir / "steps.jsonl", reference / "steps.jsonl");
}

}  // namespace
