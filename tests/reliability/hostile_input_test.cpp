// Hostile input, as an adversarial user gives it: every reproducer of issue 13 ends with exit 1
// (or 2) and a message that names the file and the cause, quickly, without a signal, a hang or
// silent acceptance. Each test runs the `troupe` command the way a user does.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>

#include "runtime/checkpoint/safetensors.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;

using troupe::testing::run_result;

/// `troupe ARGUMENTS`, killed after 60 s (a hang fails the test with exit 124).
run_result troupe_run(const std::string& arguments) {
  const char* exe = std::getenv("TROUPE_EXE");
  if (exe == nullptr) throw std::runtime_error("TROUPE_EXE is not set (run through meson test)");
  return troupe::testing::run_command(fmt::format("timeout -s KILL 60 {} {}", exe, arguments));
}

std::string source(const std::string& relative) {
  return (troupe::testing::source_dir() / relative).string();
}

fs::path scratch(const std::string& name) {
  return troupe::testing::scratch_dir("reliability", name);
}

void write(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
}

std::string read(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Exit 1 and every one of `parts` in the output.
void expect_refused(const run_result& r, std::initializer_list<std::string> parts) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  for (const auto& part : parts)
    EXPECT_NE(r.output.find(part), std::string::npos) << "'" << part << "' not in:\n" << r.output;
}

/// The tiny model's config.json with `field` replaced by `value` (raw JSON text).
std::string tiny_config_with(const std::string& field, const std::string& value) {
  std::string text = read(source("topologies/models/tiny/config.json"));
  const auto at = text.find("\"" + field + "\"");
  const auto colon = text.find(':', at);
  const auto end = text.find_first_of(",\n}", colon);
  return text.substr(0, colon + 1) + " " + value + text.substr(end);
}

/// The shipped tiny.toml in `dir` (its model config copied next to it), with `replace` swapped
/// for `by` when given.
fs::path tiny_topology(const fs::path& dir, const std::string& replace = "",
                       const std::string& by = "") {
  fs::create_directories(dir / "models/tiny");
  fs::copy_file(source("topologies/models/tiny/config.json"), dir / "models/tiny/config.json",
                fs::copy_options::overwrite_existing);
  std::string text = read(source("topologies/tiny.toml"));
  if (!replace.empty()) {
    const auto at = text.find(replace);
    if (at == std::string::npos) throw std::runtime_error("no '" + replace + "' in tiny.toml");
    text.replace(at, replace.size(), by);
  }
  write(dir / "tiny.toml", text);
  return dir / "tiny.toml";
}

TEST(HostileInput, AJsonNumberBeyondDoubleRangeIsAnErrorNamingTheFile) {
  const fs::path dir = scratch("json-1e400");
  const fs::path topo = tiny_topology(dir);
  write(dir / "models/tiny/config.json", tiny_config_with("rope_theta", "1e400"));
  expect_refused(troupe_run("topo check " + topo.string()),
                 {(dir / "models/tiny/config.json").string(), "not valid JSON", "1e400"});

  // The same number in a safetensors header and in a shard index.
  const fs::path model = dir / "model";
  fs::create_directories(model);
  fs::copy_file(dir / "models/tiny/config.json", model / "config.json");
  write(model / "config.json", read(source("topologies/models/tiny/config.json")));
  const std::string header = R"({"w":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write(model / "model.safetensors", bytes + header + std::string(4, '\0'));
  expect_refused(troupe_run("logits --model " + model.string() + " --tokens 1"),
                 {(model / "model.safetensors").string(), "not valid JSON"});
  write(model / "model.safetensors.index.json", R"({"metadata":{"total_size":1e400}})");
  expect_refused(troupe_run("logits --model " + model.string() + " --tokens 1"),
                 {(model / "model.safetensors.index.json").string(), "not valid JSON"});
}

TEST(HostileInput, LayerRangesAreBoundedBeforeTheyAreExpanded) {
  const fs::path dir = scratch("layer-ranges");
  for (const char* range : {"2147483640-2147483647", "0-50000000", "0-99999999999"}) {
    const fs::path topo =
        tiny_topology(dir, "layers = \"0-3\"", fmt::format("layers = \"{}\"", range));
    const run_result r = troupe_run("topo check " + topo.string());
    expect_refused(r, {topo.string()});
    EXPECT_TRUE(r.output.find("does not exist: the model has 4 layers (0-3)") !=
                    std::string::npos ||
                r.output.find("is not a non-negative integer") != std::string::npos)
        << r.output;
    EXPECT_LT(std::count(r.output.begin(), r.output.end(), '\n'), 10) << r.output;
  }
  // An explicit list of thousands of bad layers: at most 20 errors, then how many more.
  std::string many = "layers = [0, 1, 2, 3";
  for (int i = 0; i < 5000; ++i) many += fmt::format(", {}", 4 + i);
  const fs::path topo = tiny_topology(dir, "layers = \"0-3\"", many + "]");
  const run_result r = troupe_run("topo check " + topo.string());
  expect_refused(r, {"and 4980 more"});
  EXPECT_LT(std::count(r.output.begin(), r.output.end(), '\n'), 30) << r.output;
}

TEST(HostileInput, ModelSizesBeyondAnyModelAreRefused) {
  const fs::path dir = scratch("huge-model");
  const fs::path topo = tiny_topology(dir);
  for (const char* field : {"num_hidden_layers", "hidden_size", "vocab_size"}) {
    write(dir / "models/tiny/config.json", tiny_config_with(field, "9223372036854775807"));
    expect_refused(troupe_run("topo check " + topo.string()),
                   {"config.json", field, "must be at most"});
  }
  write(dir / "models/tiny/config.json", tiny_config_with("vocab_size", "18446744073709551615"));
  expect_refused(troupe_run("topo check " + topo.string()), {"vocab_size", "must be at most"});
}

TEST(HostileInput, TopologyIntegersAreNeverCutTo32Bits) {
  const fs::path dir = scratch("narrowing");
  const std::string topo = tiny_topology(dir).string();
  for (const char* setting :
       {"parallel.pipeline=4294967297", "parallel.expert=4294967298",
        "schedule.micro_batches=4294967298", "train.steps=0", "train.micro_batch_size=-1"}) {
    const std::string key = std::string(setting).substr(0, std::string(setting).find('='));
    expect_refused(troupe_run(fmt::format("train {} --set {}", topo, setting)),
                   {key, "is out of range"});
  }
  const std::string hosts = tiny_topology(dir, "[[stages]]",
                                          "[[hosts]]\nname = \"h\"\ngpus = 4294967297\n\n"
                                          "[[stages]]\nhost = \"h\"")
                                .string();
  expect_refused(troupe_run("topo check " + hosts), {"hosts[0].gpus = 4294967297", "out of range"});
  expect_refused(troupe_run(fmt::format("train {} --set train.learning_rate=inf", topo)),
                 {"train.learning_rate", "not a finite number"});
}

TEST(HostileInput, CommandLineValuesAreChecked) {
  const fs::path dir = scratch("command-line");
  const std::string topo = tiny_topology(dir).string();
  for (const char* arguments : {"--steps 0", "--steps -5", "--threads 3000", "--steps abc"}) {
    const run_result r = troupe_run(fmt::format("train {} {}", topo, arguments));
    EXPECT_EQ(r.exit_code, 1) << arguments << "\n" << r.output;
    EXPECT_EQ(r.output.find("step 1/"), std::string::npos) << arguments << "\n" << r.output;
  }
  EXPECT_EQ(troupe_run("frobnicate").exit_code, 1);
  EXPECT_EQ(troupe_run("--help").exit_code, 0);
}

TEST(HostileInput, FilesThatNeverEndAndPathsThatCannotBeReadAreErrors) {
  expect_refused(troupe_run("topo check /dev/zero"), {"/dev/zero", "larger than"});
  const fs::path dir = scratch("unreadable");
  fs::create_directory_symlink(dir / "loop", dir / "loop");
  const run_result r = troupe_run("logits --model " + (dir / "loop").string() + " --tokens 1");
  expect_refused(r, {(dir / "loop").string()});
  expect_refused(troupe_run("topo check " + dir.string()), {dir.string(), "directory"});
}

TEST(HostileInput, ASafetensorsShapeWhoseElementCountOverflowsIsRefused) {
  const fs::path dir = scratch("shape-overflow");
  // 2^62 + 1 elements of 4 bytes: 2^64 + 4 bytes, which wraps to 4.
  const std::string header =
      R"({"w":{"dtype":"F32","shape":[4611686018427387905],"data_offsets":[0,4]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write(dir / "bad.safetensors", bytes + header + std::string(4, '\0'));
  try {
    troupe::safetensors_file::open(dir / "bad.safetensors");
    ADD_FAILURE() << "the overflowing shape was accepted";
  } catch (const troupe::checkpoint_error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << e.what();
  }
}

}  // namespace
