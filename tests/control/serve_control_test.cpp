// `troupe ctl` for a server (`troupe serve --control`, runtime/serve/serving_control.hpp), driven
// as a user does from a second terminal: status, plugin swaps while requests stream (an identical
// build of the moe and the attention plugin changes no completion, greedy or sampled), swaps that
// cannot load refused with the cause while serving goes on, and expert re-placements on demand,
// from the observed load or a load file, without a dropped or changed request.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"
#include "tests/support/controlled_job.hpp"
#include "tests/support/served_process.hpp"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using troupe::testing::controlled_job;
using troupe::testing::run_command;
using troupe::testing::run_result;

/// A plugin as the build made it (an identical build of what the server runs).
fs::path built_plugin(const std::string& name) {
  return fs::path(std::getenv("TROUPE_BUILD_DIR")) / "plugins" / name /
         ("libtroupe-" + name + ".so");
}

fs::path unsafe_plugin(const std::string& name) {
  return fs::path(std::getenv("TROUPE_TEST_UNSAFE_PLUGIN_DIR")) /
         ("libtroupe-broken-" + name + ".so");
}

/// Request `i`'s completion text ("<reply>" when it has none): greedy for even i, sampled with
/// seed i for odd ones.
std::string complete(const std::string& url, int i) {
  const nlohmann::json body{{"model", "step-000001"},
                            {"prompt", fmt::format("Hot swap {}: ", i)},
                            {"max_tokens", 200},
                            {"temperature", i % 2 == 0 ? 0.0 : 0.8},
                            {"seed", i}};
  return troupe::testing::completion_text(url, body);
}

std::vector<std::string> complete_all(const std::string& url, int n) {
  std::vector<std::future<std::string>> replies;
  for (int i = 0; i < n; ++i)
    replies.push_back(std::async(std::launch::async, [&url, i] { return complete(url, i); }));
  std::vector<std::string> texts;
  for (auto& r : replies) texts.push_back(r.get());
  return texts;
}

/// A tiny checkpoint trained one step (shared by the tests).
const fs::path& checkpoint() {
  static const fs::path model = [] {
    const fs::path dir = troupe::testing::scratch_dir("control", "serve-checkpoint");
    const run_result r = run_command(fmt::format(
        "{} train {}/topologies/tiny.toml --steps 1 --checkpoint-dir {} --set "
        "train.micro_batch_size=2 --set train.sequence_length=32 --threads 2 --quiet",
        troupe::testing::troupe_exe(), std::getenv("TROUPE_SOURCE_DIR"), (dir / "ck").string()));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return dir / "ck" / "step-000001";
  }();
  return model;
}

controlled_job start_server(const std::string& name, const std::string& extra) {
  return {troupe::testing::scratch_dir("control", name), name,
          fmt::format("--model {} --listen 127.0.0.1:0 --control 127.0.0.1:0 --threads 2 "
                      "--kv-cache-mib 16 --cache-dtype f32 {}",
                      checkpoint().string(), extra),
          "serve"};
}

/// Waits until the server decodes some sequence (false if it never does within 30 s).
bool decoding(const controlled_job& server) {
  return troupe::testing::eventually(30, [&] { return server.status().value("decoding", 0) > 0; });
}

/// The server's OpenAI URL once its control endpoint answers ("" if it never does).
std::string url_of(const controlled_job& server) {
  std::string url;
  troupe::testing::eventually(90, [&] {
    url = server.status().value("url", std::string());
    return !url.empty();
  });
  return url;
}

TEST(ServeControl, SwapsAndRebalancesWhileRequestsStreamChangeNoCompletion) {
  // Two sequences at a time: the 16 requests take long enough to be decoding during the swaps.
  auto server = start_server("serve-swaps",
                             "--max-batch 2 --expert-shards 2 --redundant-experts 2 "
                             "--rebalance-interval 0");
  const std::string url = url_of(server);
  ASSERT_FALSE(url.empty()) << server.log();
  const std::vector<std::string> before = complete_all(url, 16);

  auto status = server.status();
  EXPECT_EQ(status.at("kind"), "server");
  EXPECT_EQ(status.at("state"), "serving");
  EXPECT_EQ(status.at("instances"), nlohmann::json::array({"serve"}));
  EXPECT_EQ(status.at("plugins").at("moe").at("generation"), 1);

  // While 16 requests stream: identical builds of the moe and attention plugins, and a re-placement
  // from the load the requests routed.
  auto during = std::async(std::launch::async, [&url] { return complete_all(url, 16); });
  ASSERT_TRUE(decoding(server)) << server.log();
  const run_result moe = server.ctl("swap --plugin moe --library " + built_plugin("moe").string());
  EXPECT_EQ(moe.exit_code, 0) << moe.output << server.log();
  EXPECT_THAT(moe.output, HasSubstr("swapped the moe plugin: moe"));
  EXPECT_THAT(moe.output, HasSubstr("(generation 2,"));
  const run_result mla =
      server.ctl("swap --plugin attention --library " + built_plugin("mla").string());
  EXPECT_EQ(mla.exit_code, 0) << mla.output;
  const run_result moved = server.ctl("rebalance");
  EXPECT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_THAT(moved.output, HasSubstr("re-placed the experts from the observed load"));
  EXPECT_EQ(during.get(), before) << "a swap or a re-placement changed a completion";

  // A skewed load file: expert 0 of every MoE layer is hot, so it gets the redundant copies.
  const fs::path load = server.dir() / "load.json";
  {
    nlohmann::json rows = nlohmann::json::object();
    for (const int layer : {1, 2, 3, 4}) {  // tiny's MoE layers and its MTP module's
      std::vector<int> row(16, 10);
      row[0] = 5000;
      row[1] = 3000;
      rows[std::to_string(layer)] = row;
    }
    std::ofstream(load) << rows.dump();
  }
  const run_result given = server.ctl("rebalance --json --load " + load.string());
  ASSERT_EQ(given.exit_code, 0) << given.output;
  const auto reply = nlohmann::json::parse(given.output);
  EXPECT_EQ(reply.at("outcome"), "moved") << reply.dump();
  EXPECT_GT(reply.at("moved").get<int>(), 0);
  for (const auto& [layer, shards] : reply.at("instances").at("serve").at("shards").items()) {
    int copies_of_0 = 0;
    for (const auto& shard : shards)
      for (const auto& expert : shard) copies_of_0 += expert == 0;
    EXPECT_EQ(copies_of_0, 2) << "layer " << layer << ": " << shards.dump();
  }
  EXPECT_EQ(complete_all(url, 16), before) << "the re-placement changed a completion";

  status = server.status();
  EXPECT_EQ(status.at("plugins").at("moe").at("generation"), 2);
  EXPECT_EQ(status.at("plugins").at("attention").at("generation"), 2);
  EXPECT_EQ(status.at("swaps").size(), 2u);
  EXPECT_EQ(status.at("rebalances").size(), 2u);
  EXPECT_EQ(server.terminate(), 0) << server.log();
  EXPECT_FALSE(fs::exists(server.dir() / "run" / "serve-swaps" / "control.json"));
}

TEST(ServeControl, PrefillAndDecodeInstancesSwapTogether) {
  auto server =
      start_server("serve-split", "--max-batch 2 --prefill-instances 1 --decode-instances 2");
  const std::string url = url_of(server);
  ASSERT_FALSE(url.empty()) << server.log();
  const std::vector<std::string> before = complete_all(url, 16);
  EXPECT_EQ(server.status().at("instances"),
            nlohmann::json::array({"prefill0", "decode0", "decode1"}));
  auto during = std::async(std::launch::async, [&url] { return complete_all(url, 16); });
  ASSERT_TRUE(decoding(server)) << server.log();
  for (const std::string role : {"moe", "attention"}) {
    const run_result r =
        server.ctl(fmt::format("swap --plugin {} --library {}", role,
                               built_plugin(role == "moe" ? "moe" : "mla").string()));
    EXPECT_EQ(r.exit_code, 0) << r.output << server.log();
  }
  EXPECT_EQ(during.get(), before) << "a swap changed a completion";
  EXPECT_EQ(server.status().at("plugins").at("moe").at("generation"), 2);
  EXPECT_EQ(server.terminate(), 0) << server.log();
}

TEST(ServeControl, SwapsThatCannotLoadAreRefusedAndServingGoesOn) {
  ::setenv("TROUPE_PLUGIN_PROBE_TIMEOUT", "2", 1);
  auto server = start_server("serve-refusals", "");
  ::unsetenv("TROUPE_PLUGIN_PROBE_TIMEOUT");
  const std::string url = url_of(server);
  ASSERT_FALSE(url.empty()) << server.log();
  const std::vector<std::string> before = complete_all(url, 4);
  struct attempt {
    std::string arguments, expected;
    int exit_code;
  };
  const std::vector<attempt> attempts{
      {"--plugin moe --library " + built_plugin("mla").string(),
       "plugin 'mla' is a attention plugin, but a plugin of kind moe is needed here", 1},
      {"--plugin moe --library " + unsafe_plugin("entry-segv").string(),
       "killed by SIGSEGV (Segmentation fault)", 1},
      {"--plugin attention --library " + unsafe_plugin("ctor-exit").string(),
       "exited with status 0", 1},
      {"--plugin gemm --builtin", "a server swaps its attention, moe and mtp plugins", 1},
      {"--plugin attention --library " +
           (fs::path(std::getenv("TROUPE_TEST_PLUGIN_DIR")) / "libtroupe-test-attention.so")
               .string(),
       "has no cached forward (plugin ABI 1.2 forward_cached): it cannot decode over the KV cache",
       1},
      {"--plugin mtp --library " + built_plugin("mtp").string(),
       "no MTP module runs here: the server decodes without --speculative mtp", 1},
      {"--plugin nothing --library " + built_plugin("moe").string(),
       "name a role (attention, moe, mtp) or a plugin the server runs", 1},
  };
  for (const auto& a : attempts) {
    const run_result r = server.ctl("swap " + a.arguments);
    EXPECT_EQ(r.exit_code, a.exit_code) << r.output;
    EXPECT_THAT(r.output, HasSubstr(a.expected)) << a.arguments;
  }
  // Without expert shards there is nothing to re-place; a server has no pause.
  const run_result rebalance = server.ctl("rebalance");
  EXPECT_EQ(rebalance.exit_code, 1);
  EXPECT_THAT(rebalance.output, HasSubstr("this server has no expert shards"));
  EXPECT_THAT(server.ctl("pause").output,
              HasSubstr("the commands are /v1/{rebalance, status, swap}"));

  const auto status = server.status();
  for (const auto& [role, plugin] : status.at("plugins").items())
    EXPECT_EQ(plugin.at("generation"), 1) << role;
  EXPECT_EQ(complete_all(url, 4), before);
  EXPECT_EQ(server.terminate(), 0) << server.log();
}

// Not control, but the same servers: `--speculative mtp` drafts every request with the MTP module
// (its counters in /metrics move), and greedy completions are those of a server without it.
TEST(ServeSpeculative, EveryRequestDraftsAndGreedyCompletionsStayTheSame) {
  auto plain = start_server("serve-plain", "");
  const std::string plain_url = url_of(plain);
  ASSERT_FALSE(plain_url.empty()) << plain.log();
  std::vector<std::string> greedy;
  for (int i = 0; i < 8; i += 2) greedy.push_back(complete(plain_url, i));
  EXPECT_EQ(plain.terminate(), 0);
  auto mtp = start_server("serve-mtp", "--speculative mtp");
  const std::string url = url_of(mtp);
  ASSERT_FALSE(url.empty()) << mtp.log();
  for (int i = 0; i < 8; i += 2)
    EXPECT_EQ(complete(url, i), greedy[static_cast<std::size_t>(i / 2)]);
  const std::string metrics = run_command("curl -s " + url + "/metrics").output;
  EXPECT_THAT(metrics, ::testing::ContainsRegex("troupe_speculative_drafted_tokens_total [1-9]"))
      << metrics;
  EXPECT_EQ(mtp.terminate(), 0) << mtp.log();
}

TEST(ServeControl, TheControlAddressIsCheckedBeforeTheWeightsAreRead) {
  const run_result r =
      run_command(fmt::format("{} serve --model {} --control 10.0.0.1:0",
                              troupe::testing::troupe_exe(), checkpoint().string()));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--control 10.0.0.1:0: give a loopback HOST:PORT"));
}

}  // namespace
