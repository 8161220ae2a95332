// The `troupe` command as a user runs it: exit codes, --help everywhere, diagnostics with
// file:line:column, DOT that Graphviz accepts, and the plugin listing.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"
#include "tests/support/fixtures.hpp"

namespace {

namespace fs = std::filesystem;

using troupe::testing::run_result;

run_result run(const std::string& arguments, const std::string& environment = "") {
  const char* exe = std::getenv("TROUPE_EXE");
  if (exe == nullptr) throw std::runtime_error("TROUPE_EXE is not set (run through meson test)");
  return troupe::testing::run_command(environment + " " + exe + " " + arguments);
}

std::string source(const std::string& relative) {
  return (fs::path(std::getenv("TROUPE_SOURCE_DIR")) / relative).string();
}

void expect_contains(const run_result& result, const std::string& part) {
  EXPECT_NE(result.output.find(part), std::string::npos) << "'" << part << "' not in:\n"
                                                         << result.output;
}

TEST(Cli, HelpOnEverySubcommand) {
  for (const char* command :
       {"", "version", "plugins", "plugins list", "topo", "topo check", "topo dot", "topo keys",
        "train", "plot", "schedule", "tokenize", "bench attention"}) {
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
  expect_contains(result, "plugin ABI 1.6");
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

// A cuda:N placement this machine cannot honour is refused with file:line:column by `topo check
// --for-this-machine` and by `train`, never run on the CPU (CI has no GPU; on a GPU machine the
// model's missing GPU path refuses it for training).
TEST(Cli, GpuPlacementsThisMachineCannotHonourAreRefused) {
  const std::string file = source("topologies/gpu-host-8.toml");
  auto check = run("topo check --for-this-machine " + file);
  if (check.exit_code == 0) GTEST_SKIP() << "this machine has the 8 GPUs gpu-host-8.toml uses";
  EXPECT_EQ(check.exit_code, 1) << check.output;
  expect_contains(check, file + ":");
  expect_contains(check, "stage 0 replica 0 is placed on cuda:0, but ");
  expect_contains(check, "placements this machine cannot honour");
  auto host = run("topo check --for-this-machine --host nowhere " + file);
  EXPECT_EQ(host.exit_code, 1) << host.output;
  expect_contains(host, "--host nowhere: the topology has no such host");

  auto train = run("train " + file + " --steps 1");
  EXPECT_EQ(train.exit_code, 1) << train.output;
  expect_contains(train, file + ":");
  expect_contains(train, "is placed on cuda:");
  EXPECT_EQ(train.output.find("step 1"), std::string::npos) << train.output;

  auto cpu = run("topo check --for-this-machine " + source("topologies/tiny.toml"));
  EXPECT_EQ(cpu.exit_code, 0) << cpu.output;
  expect_contains(cpu, "OK for this machine");
}

TEST(Cli, BenchModelRefusesWhatItCannotComputeBeforeBuilding) {
  auto bf16 = run("bench model --config tiny --precision bf16");
  EXPECT_EQ(bf16.exit_code, 1) << bf16.output;
  expect_contains(bf16, "--precision bf16: BF16 computes on a GPU's tensor cores");
  auto unknown = run("bench model --config tiny --precision fp16");
  EXPECT_EQ(unknown.exit_code, 1) << unknown.output;
  expect_contains(unknown, "--precision: use fp32, bf16 or fp8, not fp16");
  auto gpu = run("bench model --config tiny --device cuda:7");
  if (gpu.exit_code == 0) GTEST_SKIP() << "this machine has a cuda:7";
  EXPECT_EQ(gpu.exit_code, 1) << gpu.output;
  expect_contains(gpu, "cuda:7");
  EXPECT_EQ(gpu.output.find("forward + backward"), std::string::npos) << gpu.output;
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
  const fs::path dir = troupe::testing::scratch_dir("cli-test", "dot");
  const fs::path dot_file = dir / "test.dot";
  auto result = run("topo dot " + source("topologies/pp2-ep4.toml") + " -o " + dot_file.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  ASSERT_TRUE(fs::exists(dot_file));
  if (std::system("command -v dot >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "graphviz is not installed (tools/setup installs it)";
  const fs::path svg = dir / "test.svg";
  EXPECT_EQ(std::system(("dot -Tsvg " + dot_file.string() + " -o " + svg.string()).c_str()), 0);
  EXPECT_GT(fs::file_size(svg), 1000u);
}

fs::path scratch_dir(const std::string& name) {
  return troupe::testing::scratch_dir("cli-test", name);
}

std::vector<nlohmann::json> read_log(const fs::path& file) {
  return troupe::testing::read_json_lines(file);
}

// Small steps of the tiny model for CLI tests.
const std::string small_steps =
    " --set train.micro_batch_size=2 --set train.sequence_length=32 --threads 2";

TEST(Cli, TrainLogsEveryStepCheckpointsAndPlots) {
  const fs::path dir = scratch_dir("train");
  auto result = run("train --steps 3 --log-json " + (dir / "log.json").string() +
                    " --checkpoint-dir " + (dir / "ckpt").string() + small_steps);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  expect_contains(result, "step 3/3");
  expect_contains(result, "tok/s");
  expect_contains(result, "load max/mean");
  const auto log = read_log(dir / "log.json");
  ASSERT_EQ(log.size(), 3u);
  for (const char* field : {"step", "loss", "mtp_loss", "balance_loss", "lr", "tokens_per_s",
                            "expert_load_max_over_mean", "expert_load"})
    EXPECT_TRUE(log[2].contains(field)) << field;
  EXPECT_EQ(log[2]["step"], 3);
  EXPECT_TRUE(fs::exists(dir / "ckpt" / "step-000003" / "model.safetensors.index.json"));
  // The checkpoint and its EMA weights generate text, through troupe's byte tokenizer.
  for (const fs::path& weights :
       {dir / "ckpt" / "step-000003", dir / "ckpt" / "step-000003" / "ema"}) {
    auto generated =
        run("generate --model " + weights.string() + " --prompt Hello --max-new-tokens 4 --json");
    ASSERT_EQ(generated.exit_code, 0) << generated.output;
    const auto g = nlohmann::json::parse(generated.output);
    EXPECT_EQ(g.at("prompt_ids").size(), 6u);  // BOS and five bytes
    EXPECT_TRUE(g.contains("text"));
    EXPECT_LE(g.at("generated_tokens").size(), 4u);
  }

  auto plotted =
      run("plot " + (dir / "log.json").string() + " --out " + (dir / "plot.png").string());
  ASSERT_EQ(plotted.exit_code, 0) << plotted.output;
  std::ifstream png(dir / "plot.png", std::ios::binary);
  char magic[4] = {};
  png.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  auto bad_log = run("plot " + source("README.md") + " --out " + (dir / "x.png").string());
  EXPECT_EQ(bad_log.exit_code, 1);
  expect_contains(bad_log, "README.md:1: not a step record");
}

TEST(Cli, TrainWithoutCheckpointsWritesNone) {
  const fs::path dir = scratch_dir("no-checkpoint");
  const fs::path ckpt = dir / "ckpt";
  auto result = run("train --steps 2 --no-checkpoint --checkpoint-dir " + ckpt.string() +
                    " --set train.checkpoint_every=1" + small_steps);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  expect_contains(result, "step 2/2");
  EXPECT_EQ(result.output.find("checkpoint "), std::string::npos) << result.output;
  EXPECT_FALSE(fs::exists(ckpt)) << "--no-checkpoint created " << ckpt;
}

TEST(Cli, TrainStopsOnSigtermAfterTheStepAndResumes) {
  const fs::path dir = scratch_dir("sigterm");
  const std::string log = (dir / "log.json").string(), ckpt = (dir / "ckpt").string();
  // Start a long run, wait for two logged steps, send SIGTERM, report the exit status.
  const std::string script = fmt::format(
      "bash -c '{} train --steps 1000 --quiet --log-json {} --checkpoint-dir {} {} & pid=$!; "
      "for i in $(seq 600); do [ -f {} ] && [ $(wc -l < {}) -ge 2 ] && break; sleep 0.1; done; "
      "kill -TERM $pid; wait $pid; echo exit=$?'",
      std::getenv("TROUPE_EXE"), log, ckpt, small_steps, log, log);
  const std::string output = troupe::testing::run_command(script).output;
  EXPECT_NE(output.find("exit=3"), std::string::npos) << output;
  EXPECT_NE(output.find("stopped by a signal"), std::string::npos) << output;
  const auto steps = read_log(log);
  ASSERT_GE(steps.size(), 2u);
  const int last = steps.back()["step"].get<int>();
  // Every completed step is in the checkpoint: `latest` names the last logged step.
  std::ifstream latest(dir / "ckpt" / "latest");
  std::string name;
  std::getline(latest, name);
  EXPECT_EQ(name, fmt::format("step-{:06d}", last));

  // Its own checkpoint directory too: the topology's default is relative to the working
  // directory, which the suites running beside this one share.
  auto resumed =
      run(fmt::format("train --steps {} --quiet --log-json {} --resume {} --checkpoint-dir {} {}",
                      last + 2, log, ckpt, ckpt, small_steps));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_contains(resumed, fmt::format("at step {}", last));
  const auto all = read_log(log);
  ASSERT_EQ(all.size(), steps.size() + 2);
  EXPECT_EQ(all[steps.size()]["step"], last + 1);
}

TEST(Cli, TrainRejectsBadInputWithTheCause) {
  auto broken = run("train " + source("tests/fixtures/topologies/broken.toml"));
  EXPECT_EQ(broken.exit_code, 1) << broken.output;
  auto bad_set = run("train --set parallel.pipeline=3");
  EXPECT_EQ(bad_set.exit_code, 1) << bad_set.output;
  expect_contains(bad_set, "--set parallel.pipeline=3");
  auto tokenizer = run("train --set data.tokenizer=tokenizer.json");
  EXPECT_EQ(tokenizer.exit_code, 1);
  expect_contains(tokenizer, "byte-level tokenizer");
  auto resume = run("train --resume /nonexistent/checkpoints");
  EXPECT_EQ(resume.exit_code, 1);
  expect_contains(resume, "/nonexistent/checkpoints: not a checkpoint");
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
  const fs::path out = troupe::testing::scratch_dir("cli-test", "logits") / "logits.bin";
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

TEST(Cli, GenerateContinuesAsTransformersPredictsAndStopsWhereAsked) {
  const std::string model = source("tests/fixtures/models/q-lora");
  std::ifstream in(model + "/reference.json");
  const auto reference = nlohmann::json::parse(in);
  std::string tokens;
  for (const auto& t : reference["tokens"])
    tokens += (tokens.empty() ? "" : ",") + std::to_string(t.get<int>());
  // transformers' next token after the prompt: the argmax of its last row of logits.
  const auto logits = troupe::testing::read_floats(model + "/logits.bin");
  const std::size_t vocab = 96, rows = logits.size() / vocab;
  const auto last = logits.begin() + static_cast<std::ptrdiff_t>((rows - 1) * vocab);
  const int expected = static_cast<int>(std::max_element(last, last + vocab) - last);
  const std::string base = "generate --model " + model + " --tokens " + tokens;
  auto greedy = run(base + " --max-new-tokens 6 --json");
  ASSERT_EQ(greedy.exit_code, 0) << greedy.output;
  const auto g = nlohmann::json::parse(greedy.output);
  ASSERT_FALSE(g.at("generated_tokens").empty());
  EXPECT_EQ(g.at("generated_tokens").front(), expected);
  EXPECT_EQ(g.at("prompt_tokens"), rows);
  const std::string stop = g.at("stop");
  EXPECT_TRUE(stop == "eos" ? g.at("generated_tokens").back() == 1  // the config's EOS
                            : g.at("generated_tokens").size() == 6)
      << greedy.output;
  for (const char* key : {"prompt_seconds", "generate_seconds", "generated_tokens_per_second"})
    EXPECT_TRUE(g.contains(key)) << key;
  // Streamed: the ids as text (no tokenizer), then the rates on stderr.
  auto streamed = run(base + " --max-new-tokens 3");
  EXPECT_EQ(streamed.exit_code, 0) << streamed.output;
  expect_contains(streamed, std::to_string(expected) + " ");
  expect_contains(streamed, "tokens/s");
  // A seed gives the same draws again.
  const std::string sampled =
      base + " --max-new-tokens 8 --temperature 1.5 --top-k 20 --seed 11 --json";
  auto first = run(sampled), second = run(sampled);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_EQ(nlohmann::json::parse(first.output).at("generated_tokens"),
            nlohmann::json::parse(second.output).at("generated_tokens"));
  // Refusals, with the cause.
  auto cold = run(base + " --temperature -1");
  EXPECT_EQ(cold.exit_code, 1);
  expect_contains(cold, "temperature -1 must be finite and at least 0");
  auto no_tokenizer = run("generate --model " + model + " --prompt hello");
  EXPECT_EQ(no_tokenizer.exit_code, 1);
  expect_contains(no_tokenizer, "--prompt needs a tokenizer");
  auto wrong_vocabulary = run("generate --model " + model + " --prompt hello --tokenizer " +
                              source("tests/fixtures/tokenizer/deepseek-v3"));
  EXPECT_EQ(wrong_vocabulary.exit_code, 1);
  expect_contains(wrong_vocabulary, "outside the model's vocabulary of 96");
  // MTP speculative decoding: greedy, the same text; the drafts and their acceptance reported.
  auto speculative = run(base + " --max-new-tokens 6 --json --speculative mtp");
  ASSERT_EQ(speculative.exit_code, 0) << speculative.output;
  const auto s = nlohmann::json::parse(speculative.output);
  EXPECT_EQ(s.at("generated_tokens"), g.at("generated_tokens"));
  for (const char* key : {"drafted_tokens", "accepted_tokens", "acceptance_rate"})
    EXPECT_TRUE(s.contains(key)) << key;
  auto bf16 = run(base + " --max-new-tokens 6 --json --cache-dtype bf16");
  ASSERT_EQ(bf16.exit_code, 0) << bf16.output;
  // A topology's [inference] section sizes the cache; a request it cannot hold is refused.
  const auto topology_file = std::filesystem::temp_directory_path() / "troupe-cli-inference.toml";
  std::ofstream(topology_file) << "[job]\nname = \"generate\"\n[model]\nconfig = \"" << model
                               << "/config.json\"\n[[stages]]\nlayers = \"0-2\"\n"
                               << "[inference]\nkv_cache_mib = 1\nkv_cache_dtype = \"bf16\"\n";
  auto budgeted = run(base + " --max-new-tokens 6 --json --topology " + topology_file.string());
  ASSERT_EQ(budgeted.exit_code, 0) << budgeted.output;
  auto too_long = run(base + " --max-new-tokens 9000 --topology " + topology_file.string());
  EXPECT_EQ(too_long.exit_code, 1);
  expect_contains(too_long, "the KV cache of 1 MiB");
  expect_contains(too_long, "holds 8704 tokens (blocks of 64, 120 bytes per token in bf16)");
  std::filesystem::remove(topology_file);
  // A model without an MTP module cannot draft: refused before its weights are read.
  const auto no_mtp = std::filesystem::temp_directory_path() / "troupe-cli-no-mtp";
  std::filesystem::remove_all(no_mtp);
  std::filesystem::copy(model, no_mtp);
  {
    std::ifstream config_in(no_mtp / "config.json");
    auto config = nlohmann::json::parse(config_in);
    config["num_nextn_predict_layers"] = 0;
    std::ofstream(no_mtp / "config.json") << config.dump();
  }
  auto undraftable =
      run("generate --model " + no_mtp.string() + " --tokens " + tokens + " --speculative mtp");
  EXPECT_EQ(undraftable.exit_code, 1);
  expect_contains(undraftable, "has no MTP module (config.json num_nextn_predict_layers = 0)");
  std::filesystem::remove_all(no_mtp);
}

TEST(Cli, ServeRefusesWhatCannotServeBeforeLoading) {
  const std::string model = source("tests/fixtures/models/q-lora");
  auto no_tokenizer = run("serve --model " + model + " --listen 127.0.0.1:0");
  EXPECT_EQ(no_tokenizer.exit_code, 1);
  expect_contains(no_tokenizer, "has no tokenizer.json and is no troupe checkpoint");
  const auto empty_key = std::filesystem::temp_directory_path() / "troupe-cli-empty-key";
  std::ofstream(empty_key) << "\n";
  auto key = run("serve --model " + model + " --api-key-file " + empty_key.string());
  EXPECT_EQ(key.exit_code, 1);
  expect_contains(key, "its first line (the key) is empty");
  std::filesystem::remove(empty_key);
  auto listen = run("serve --model " + model + " --listen 127.0.0.1:99999");
  EXPECT_EQ(listen.exit_code, 1);
  expect_contains(listen, "--listen 127.0.0.1:99999: give HOST:PORT");
  auto context = run("serve --model " + model +
                     " --tokenizer bytes --kv-cache-mib 1 --context-length 1000000");
  EXPECT_EQ(context.exit_code, 1);
  expect_contains(context, "too few for a context of 1000000 tokens");
  auto lonely = run("serve --model " + model + " --tokenizer bytes --prefill-instances 2");
  EXPECT_EQ(lonely.exit_code, 1);
  expect_contains(lonely, "2 prefill instances without decode instances");
  // --set overrides the topology's keys, checked as the file's are: a bad one named.
  const std::string topology = source("topologies/expert-hosts.toml");
  auto bad_set = run("serve " + topology + " --model " + model +
                     " --set 'serve.expert_hosts=[\"node1\", \"nodes3\"]'");
  EXPECT_EQ(bad_set.exit_code, 1);
  expect_contains(bad_set, "serve.expert_hosts[1] = \"nodes3\" names no host");
  auto no_topology = run("serve --model " + model + " --set serve.max_batch=4");
  EXPECT_EQ(no_topology.exit_code, 1);
  expect_contains(no_topology, "--set serve.max_batch=4: there is no topology to override");
}

TEST(Cli, EplbPrintsDeepSeeksPlacement) {
  const auto loads = std::filesystem::temp_directory_path() / "troupe-cli-eplb.json";
  std::ofstream(loads) << "[[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],"
                          " [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]";
  const std::string base = "eplb --load " + loads.string() + " --groups 4 --nodes 2 --devices 8";
  auto placed = run(base + " --replicas 16 --json");
  ASSERT_EQ(placed.exit_code, 0) << placed.output;
  const auto plan = nlohmann::json::parse(placed.output);
  EXPECT_EQ(plan.at("phy2log"), nlohmann::json::parse("[[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, "
                                                      "1, 11, 1], [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, "
                                                      "5, 1, 5, 0, 3, 1]]"));
  EXPECT_EQ(plan.at("logcnt")[0].size(), 12u);
  EXPECT_EQ(plan.at("log2phy")[0][1], nlohmann::json::parse("[15, 13]"));
  auto readable = run(base + " --replicas 16");
  EXPECT_EQ(readable.exit_code, 0);
  expect_contains(readable, "hierarchical policy");
  auto uneven = run(base + " --replicas 18");
  EXPECT_EQ(uneven.exit_code, 1);
  expect_contains(uneven, "18 replicas do not split over 8 devices");
  std::filesystem::remove(loads);
}

TEST(Cli, TokenizeEncodesAndDecodesWithDeepSeeksTokenizer) {
  const std::string tokenizer = "--tokenizer " + source("tests/fixtures/tokenizer/deepseek-v3");
  // The ids `tokenizers` gives (tools/reference/make_tokenizer_fixture.py's tokenizer).
  auto encoded = run("tokenize " + tokenizer + " --text 'Hello, world! 12345'");
  EXPECT_EQ(encoded.exit_code, 0) << encoded.output;
  EXPECT_EQ(encoded.output, "19923,14,2058,3,223,6895,1883\n");
  auto decoded = run("tokenize " + tokenizer + " --ids 19923,14,2058,3");
  EXPECT_EQ(decoded.exit_code, 0) << decoded.output;
  EXPECT_EQ(decoded.output, "Hello, world!\n");
  auto chat = run("tokenize " + tokenizer + " --chat --json --text 'Hi'");
  EXPECT_EQ(chat.exit_code, 0) << chat.output;
  const auto j = nlohmann::json::parse(chat.output);
  EXPECT_EQ(j.at("ids").front(), 0);      // <｜begin▁of▁sentence｜>
  EXPECT_EQ(j.at("ids").back(), 128804);  // <｜Assistant｜>
  auto bad_id = run("tokenize " + tokenizer + " --ids 5,999999");
  EXPECT_EQ(bad_id.exit_code, 1);
  expect_contains(bad_id, "'999999' is not a token id in [0, 129280)");
  auto missing = run("tokenize --tokenizer /nonexistent/dir --text x");
  EXPECT_EQ(missing.exit_code, 1);
  expect_contains(missing, "/nonexistent/dir: no such file or directory");
}

TEST(Cli, TopoKeysPrintsTheReference) {
  auto result = run("topo keys");
  EXPECT_EQ(result.exit_code, 0);
  expect_contains(result, "## [[stages]] (required)");
  expect_contains(result, "| `layers` | index list | required |");
}

}  // namespace
