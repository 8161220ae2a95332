// The `troupe` command as a user runs it: exit codes, --help everywhere, diagnostics with
// file:line:column, DOT that Graphviz accepts, and the plugin listing.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;

struct run_result {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

run_result run(const std::string& arguments, const std::string& environment = "") {
  const char* exe = std::getenv("TROUPE_EXE");
  if (exe == nullptr) throw std::runtime_error("TROUPE_EXE is not set (run through meson test)");
  const std::string command = environment + " " + exe + " " + arguments + " 2>&1";
  run_result result;
  FILE* pipe = popen(command.c_str(), "r");
  std::array<char, 4096> buffer{};
  for (std::size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;)
    result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string source(const std::string& relative) {
  return (fs::path(std::getenv("TROUPE_SOURCE_DIR")) / relative).string();
}

void expect_contains(const run_result& result, const std::string& part) {
  EXPECT_NE(result.output.find(part), std::string::npos) << "'" << part << "' not in:\n"
                                                         << result.output;
}

TEST(Cli, HelpOnEverySubcommand) {
  for (const char* command : {"", "version", "plugins", "plugins list", "topo", "topo check",
                              "topo dot", "topo keys", "train"}) {
    auto result = run(std::string(command) + " --help");
    EXPECT_EQ(result.exit_code, 0) << command << "\n" << result.output;
    expect_contains(result, "Usage:");
  }
  auto none = run("");
  EXPECT_NE(none.exit_code, 0);
  auto unknown = run("frobnicate");
  EXPECT_NE(unknown.exit_code, 0);
}

TEST(Cli, Version) {
  auto result = run("version");
  EXPECT_EQ(result.exit_code, 0);
  expect_contains(result, "troupe 0.");
  expect_contains(result, "plugin ABI 1.0");
  expect_contains(result, "CUDA:");
}

TEST(Cli, TopoCheckPassesOnShippedTopologiesAndPrintsThePlan) {
  for (const char* file :
       {"topologies/tiny.toml", "topologies/pp2-ep4.toml", "topologies/gpu-host-8.toml"}) {
    auto result = run("topo check " + source(file));
    EXPECT_EQ(result.exit_code, 0) << file << "\n" << result.output;
    expect_contains(result, ": OK");
    expect_contains(result, "plan: ");
  }
  auto quiet = run("topo check -q " + source("topologies/tiny.toml"));
  EXPECT_EQ(quiet.exit_code, 0);
  EXPECT_EQ(quiet.output.find(": OK"), std::string::npos);
}

TEST(Cli, TopoCheckReportsEveryErrorWithFileLineColumn) {
  const std::string file = source("tests/fixtures/topologies/broken.toml");
  auto result = run("topo check " + file);
  EXPECT_EQ(result.exit_code, 1) << result.output;
  expect_contains(result, file +
                              ":18:1: error: stage 0 is placed on cuda:1, which does not exist on "
                              "host 'node0': it has gpus = 1 (cuda:0)");
  expect_contains(result, file + ":21:1: error: layer 1 is covered by two stages");
  expect_contains(result, "layer 3 is covered by no stage");
  expect_contains(result, "expert 15 is covered by no shard");
  expect_contains(result, "4 errors");
  auto missing = run("topo check /no/such/file.toml");
  EXPECT_NE(missing.exit_code, 0);
}

TEST(Cli, TopoDotIsValidGraphviz) {
  const fs::path dot_file = fs::temp_directory_path() / "troupe-cli-test.dot";
  auto result = run("topo dot " + source("topologies/pp2-ep4.toml") + " -o " + dot_file.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  ASSERT_TRUE(fs::exists(dot_file));
  if (std::system("command -v dot >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "graphviz is not installed (tools/setup installs it)";
  const fs::path svg = fs::temp_directory_path() / "troupe-cli-test.svg";
  EXPECT_EQ(std::system(("dot -Tsvg " + dot_file.string() + " -o " + svg.string()).c_str()), 0);
  EXPECT_GT(fs::file_size(svg), 1000u);
}

TEST(Cli, TrainSaysPlainlyThatTrainingIsNotBuilt) {
  auto result = run("train " + source("topologies/tiny.toml"));
  EXPECT_EQ(result.exit_code, 2) << result.output;
  expect_contains(result, "training is not built into this version of troupe yet");
  auto default_topology = run("train");
  EXPECT_EQ(default_topology.exit_code, 2) << default_topology.output;
  expect_contains(default_topology, "tiny.toml is valid");
  auto broken = run("train " + source("tests/fixtures/topologies/broken.toml"));
  EXPECT_EQ(broken.exit_code, 1) << broken.output;
}

TEST(Cli, PluginsListShowsGoodAndBrokenLibraries) {
  const std::string dir = std::getenv("TROUPE_TEST_PLUGIN_DIR");
  auto result = run("plugins list --dir " + dir);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  expect_contains(result, "test-attention");
  expect_contains(result, "attention");
  expect_contains(result, "test-naive-gemm");
  expect_contains(result, "init failed");
  expect_contains(result, "ABI mismatch");
  auto through_environment = run("plugins list", "TROUPE_PLUGIN_PATH=" + dir);
  expect_contains(through_environment, "TROUPE_PLUGIN_PATH");
  expect_contains(through_environment, "test-attention");
}

TEST(Cli, LogitsWritesWhatTransformersComputes) {
  const std::string model = source("tests/fixtures/models/yarn");
  std::ifstream in(model + "/reference.json");
  const auto reference = nlohmann::json::parse(in);
  std::string tokens;
  for (const auto& t : reference["tokens"])
    tokens += (tokens.empty() ? "" : ",") + std::to_string(t.get<int>());
  const fs::path out = fs::temp_directory_path() / "troupe-cli-logits.bin";
  auto result = run("logits --model " + model + " --tokens " + tokens + " --out " + out.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto expected = troupe::testing::read_floats(model + "/logits.bin");
  const auto got = troupe::testing::read_floats(out);
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_LE(troupe::testing::max_relative_error(got.data(), expected.data(), got.size()), 1e-4);
  auto summary = run("logits --model " + model + " --tokens 5,17,42");
  EXPECT_EQ(summary.exit_code, 0) << summary.output;
  expect_contains(summary, "3 positions x 96 logits");
  auto bad_token = run("logits --model " + model + " --tokens 5,96");
  EXPECT_EQ(bad_token.exit_code, 1);
  expect_contains(bad_token, "'96' is not a token id in [0, 96)");
  auto not_a_model = run("logits --model " + source("topologies") + " --tokens 1");
  EXPECT_EQ(not_a_model.exit_code, 1);
  expect_contains(not_a_model, "no config.json");
}

TEST(Cli, TopoKeysPrintsTheReference) {
  auto result = run("topo keys");
  EXPECT_EQ(result.exit_code, 0);
  expect_contains(result, "## [[stages]] (required)");
  expect_contains(result, "| `layers` | index list | required |");
}

}  // namespace
