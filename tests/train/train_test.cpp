// Training on actors, end to end on the tiny model: the loss falls on the built-in corpus;
// pipeline and expert parallelism and every schedule give the losses of the sequential
// single-stage run; the balancer lowers expert imbalance from a skewed start; the EMA equals an
// offline EMA of the checkpointed weights; resume is bit-identical; a non-finite step stops
// training without touching the last checkpoint.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <prometheus/registry.h>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/checkpoint/safetensors.hpp"
#include "runtime/checkpoint/training_checkpoint.hpp"
#include "runtime/ema/ema_tracker.hpp"
#include "runtime/topology/load.hpp"
#include "runtime/train/training_job.hpp"
#include "tests/support/command_runs.hpp"
#include "tests/support/fixtures.hpp"
#include "tests/support/markdown.hpp"

namespace {

using namespace troupe;
namespace fs = std::filesystem;

fs::path scratch(const std::string& name) {
  return troupe::testing::scratch_dir("train-test", name);
}

struct layout {
  int pipeline = 1;
  int shards = 0;  // 0: the stages compute their routed experts
  std::string schedule = "sequential";
  int micro_batches = 4;  // per data-parallel replica
  int data = 1;
};

/// A topology of the tiny model (4 layers, 16 experts) with the given layout; `extra` is TOML
/// appended (sections not otherwise written).
topology make_topology(const layout& l, const std::string& train_extra = "",
                       const std::string& extra = "") {
  std::string text = fmt::format(
      "[job]\nname = \"test\"\n[model]\nconfig = \"models/tiny/config.json\"\n"
      "[parallel]\npipeline = {}\nexpert = {}\ndata = {}\n"
      "[schedule]\nkind = \"{}\"\nmicro_batches = {}\n",
      l.pipeline, std::max(1, l.shards), l.data, l.schedule, l.micro_batches);
  const int per_stage = 4 / l.pipeline;
  for (int s = 0; s < l.pipeline; ++s)
    text += fmt::format(
        "[[stages]]\nlayers = \"{}-{}\"\n{}", s * per_stage, (s + 1) * per_stage - 1,
        l.data > 1 ? fmt::format("device = [{}]\n",
                                 fmt::join(std::vector<std::string>(l.data, "\"cpu\""), ", "))
                   : "");
  for (int s = 0; s < l.shards; ++s) text += "[[expert_shards]]\n";
  text += extra;
  text +=
      "[train]\nsteps = 3\nmicro_batch_size = 2\nsequence_length = 32\nlearning_rate = 1e-3\n"
      "warmup_steps = 1\n" +
      train_extra;
  topology_load_options options;
  options.resolve_plugins = true;
  return load_topology_text(text, troupe::testing::source_dir() / "topologies" / "test.toml",
                            options)
      .topo;
}

training_result train(const topology& topo, training_options options = {}) {
  plugin_registry registry;
  options.threads = 2;
  options.keep_steps = true;
  if (options.checkpoint_dir.empty()) options.checkpoint_at_end = false;
  training_job job(topo, registry, options);
  return job.run();
}

void expect_close(const training_result& a, const training_result& b, double tolerance,
                  const std::string& what) {
  ASSERT_EQ(a.steps.size(), b.steps.size()) << what;
  for (std::size_t i = 0; i < a.steps.size(); ++i) {
    const auto& x = a.steps[i];
    const auto& y = b.steps[i];
    for (auto [name, u, v] :
         {std::tuple{"loss", x.loss, y.loss}, std::tuple{"mtp_loss", x.mtp_loss, y.mtp_loss},
          std::tuple{"balance_loss", x.balance_loss, y.balance_loss},
          std::tuple{"grad_norm", x.grad_norm, y.grad_norm}})
      EXPECT_LE(std::abs(u - v), tolerance * std::abs(v))
          << what << ": step " << i + 1 << " " << name << " " << u << " vs " << v;
    EXPECT_EQ(x.load, y.load) << what << ": step " << i + 1 << " expert load";
  }
}

TEST(Training, LossFallsOnTheBuiltinCorpus) {
  // The default topology's model and data; 30 steps of 2 x 4 x 64 tokens. The loss starts at
  // ln(vocab) ~ 5.6 and is below 4.3 by step 30 (3.9 measured).
  topology topo = make_topology({1, 2, "1f1b", 2});
  topo.train.min_learning_rate = 1e-4;
  topo.train.warmup_steps = 5;
  topo.train.steps = 30;
  topo.train.micro_batch_size = 4;
  topo.train.sequence_length = 64;
  const auto result = train(topo);
  ASSERT_EQ(result.steps.size(), 30u);
  EXPECT_GT(result.steps.front().loss, 5.3);
  EXPECT_LT(result.steps.back().loss, 4.3);
  for (const auto& s : result.steps) EXPECT_GT(s.tokens_per_s, 0.0);
}

TEST(Training, PipelineExpertAndDataParallelismGiveTheSameLosses) {
  const auto reference = train(make_topology({1, 0, "sequential", 4}));
  // The same global batch of 4 micro-batches, also as 2 data-parallel replicas of 2.
  for (const layout& l : {layout{1, 4, "1f1b", 4}, layout{2, 0, "1f1b", 4}, layout{2, 4, "1f1b", 4},
                          layout{4, 0, "1f1b", 4}, layout{4, 4, "1f1b", 4},
                          layout{1, 0, "1f1b", 2, 2}, layout{2, 4, "1f1b", 2, 2}}) {
    const auto result = train(make_topology(l));
    // Forward is bit-identical; only the order of gradient sums of replicated parameters (the
    // embedding of the first and the last stage, data replicas) differs, so the weights drift in
    // the last bits.
    expect_close(result, reference, 1e-6,
                 fmt::format("pipeline {} expert {} data {}", l.pipeline, l.shards, l.data));
  }
}

TEST(Training, EveryScheduleMatchesSequential) {
  for (int pipeline : {2, 4}) {
    const int micro_batches = 2 * pipeline;
    const auto sequential = train(make_topology({pipeline, 4, "sequential", micro_batches}));
    for (const char* kind : {"1f1b", "dualpipe"}) {
      const auto result = train(make_topology({pipeline, 4, kind, micro_batches}));
      expect_close(result, sequential, 1e-6, fmt::format("{} with pipeline {}", kind, pipeline));
    }
  }
}

/// Max/mean expert load, averaged over the MoE layers and the last `n` steps.
double late_imbalance(const training_result& r, std::size_t n) {
  double sum = 0.0;
  std::size_t count = 0;
  for (std::size_t i = r.steps.size() - n; i < r.steps.size(); ++i)
    for (const auto& [layer, load] : r.steps[i].load) {
      sum += max_over_mean(load);
      ++count;
    }
  return sum / static_cast<double>(count);
}

TEST(Training, BalancerLowersImbalanceFromASkewedStart) {
  // Skewed start: a checkpoint after one step, with the router biases of every MoE layer set
  // to favour experts 0-3 by +0.05. The checkpoint keeps them once, in the weights (Hugging
  // Face's e_score_correction_bias), where the resumed balancer takes them from. Then 30 steps
  // with gamma = 0 and with gamma = 0.005.
  const float skew = 0.05f;
  const double balancer_gamma = 0.005;
  const fs::path dir = scratch("balancer");
  topology topo = make_topology({1, 2, "1f1b", 2});
  topo.train.steps = 1;
  training_options first;
  first.checkpoint_dir = dir;
  train(topo, first);
  const fs::path checkpoint = dir / "step-000001";
  const auto index = troupe::testing::read_json(checkpoint / "model.safetensors.index.json");
  int skewed_layers = 0;
  for (const auto& [name, file_name] : index["weight_map"].items()) {
    if (!name.ends_with("mlp.gate.e_score_correction_bias")) continue;
    ++skewed_layers;
    const fs::path file = checkpoint / file_name.get<std::string>();
    std::vector<std::pair<std::string, tensor>> tensors;
    {
      const auto contents = safetensors_file::open(file);
      for (const auto& entry : contents.entries())
        tensors.emplace_back(entry.name, contents.get(entry.name).clone());
    }
    for (auto& [n, t] : tensors)
      if (n == name)
        for (std::int64_t e = 0; e < t.numel(); ++e) t.data_as<float>()[e] = e < 4 ? skew : 0.0f;
    write_safetensors(file, tensors);
  }
  ASSERT_EQ(skewed_layers, 4) << "4 MoE layers (3 decoder layers and the MTP block)";

  std::map<double, double> imbalance;
  for (double gamma : {0.0, balancer_gamma}) {
    topology skewed = make_topology({1, 2, "1f1b", 2});
    skewed.train.steps = 31;
    skewed.balancer.gamma = gamma;
    training_options resume;
    resume.resume = checkpoint;
    const auto result = train(skewed, resume);
    ASSERT_EQ(result.steps.size(), 30u);
    imbalance[gamma] = late_imbalance(result, 10);
  }
  // Measured (max/mean per layer, mean over the 4 MoE layers and steps 22-31): 3.98 with
  // gamma = 0 (4 is every token on the same 4 experts), 2.47 with gamma = 0.005.
  RecordProperty("max_over_mean_gamma_0", std::to_string(imbalance[0.0]));
  RecordProperty("max_over_mean_gamma_0.005", std::to_string(imbalance[balancer_gamma]));
  std::cout << "max/mean expert load over steps 22-31: gamma 0: " << imbalance[0.0]
            << ", gamma 0.005: " << imbalance[balancer_gamma] << "\n";
  EXPECT_LT(imbalance[balancer_gamma], imbalance[0.0] - 0.5);
}

std::map<std::string, std::vector<double>> read_weights(const fs::path& dir) {
  const auto checkpoint = hf_checkpoint::open(dir);
  std::map<std::string, std::vector<double>> out;
  for (const auto& name : checkpoint.names()) {
    const tensor t = checkpoint.read_f32(name);
    const float* p = t.data_as<const float>();
    out[name].assign(p, p + t.numel());
  }
  return out;
}

TEST(Training, EmaEqualsAnOfflineEmaOfTheSnapshots) {
  const fs::path dir = scratch("ema");
  topology topo =
      make_topology({2, 4, "1f1b", 2}, "checkpoint_every = 1\n", "[ema]\ndecay = 0.6\n");
  training_options options;
  options.checkpoint_dir = dir;
  train(topo, options);
  // Offline, in float64: ema_1 = w_1, ema_k = 0.6 ema_{k-1} + 0.4 w_k.
  std::map<std::string, std::vector<double>> ema;
  for (int step = 1; step <= 3; ++step) {
    const auto weights = read_weights(dir / checkpoint_name(step));
    for (const auto& [name, w] : weights) {
      if (name.find("e_score_correction_bias") != std::string::npos) continue;
      auto [it, fresh] = ema.try_emplace(name, w);
      if (!fresh)
        for (std::size_t i = 0; i < w.size(); ++i) it->second[i] = 0.6 * it->second[i] + 0.4 * w[i];
    }
  }
  const auto online = read_weights(dir / checkpoint_name(3) / "ema");
  std::size_t compared = 0;
  for (const auto& [name, expected] : ema) {
    if (!online.count(name)) continue;  // the MTP modules' copies of the shared embedding/head
    const auto& got = online.at(name);
    ASSERT_EQ(got.size(), expected.size()) << name;
    double worst = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::abs(got[i] - expected[i]) / (std::abs(expected[i]) + 1e-3));
    EXPECT_LE(worst, 1e-6) << name;
    ++compared;
  }
  EXPECT_GT(compared, 50u);
}

// A GPU stage skips snapshots while the EMA is busy; the next one stands for the skipped
// updates and must equal as many updates with its weights (float64 reference).
TEST(Training, EmaSnapshotStandingForSkippedUpdatesAppliesTheDecayThatOften) {
  auto values = [](float base) {
    tensor t = tensor::zeros(dtype::f32, {1000});
    for (std::int64_t i = 0; i < t.numel(); ++i)
      t.data_as<float>()[i] = base + 0.001f * static_cast<float>(i % 97);
    return std::vector<std::pair<std::string, tensor>>{{"w", t}};
  };
  ema_tracker tracker(0.9);
  tracker.update(values(1.0f));
  tracker.update(values(-2.0f), {}, 3);
  const float* got = tracker.weights().front().second.data_as<const float>();
  double worst = 0.0;
  for (int i = 0; i < 1000; ++i) {
    double ema = 1.0 + 0.001 * (i % 97);
    const double w = -2.0 + 0.001 * (i % 97);
    for (int k = 0; k < 3; ++k) ema = 0.9 * ema + 0.1 * w;
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - ema));
  }
  EXPECT_LE(worst, 1e-6);
  EXPECT_THROW(tracker.update(values(0.0f), {}, 0), std::exception);
}

/// The AdamW moments each holder wrote into `checkpoint`'s optimizer/ (bytes of tensor data).
std::map<std::string, std::int64_t> optimizer_bytes(const fs::path& checkpoint) {
  std::map<std::string, std::int64_t> out;
  for (const auto& file : fs::directory_iterator(checkpoint / "optimizer")) {
    const auto contents = safetensors_file::open(file.path());
    auto& bytes = out[file.path().stem().string()];
    for (const auto& entry : contents.entries())
      bytes += static_cast<std::int64_t>(contents.get(entry.name).nbytes());
  }
  return out;
}

TEST(Training, ZeroOneGivesThePlainDataParallelLossesWithHalfTheMoments) {
  // Data-parallel replicas, DualPipe's two copies of each stage, the embedding the first and the
  // last stage share: every kind of replicated parameter, plain and under ZeRO-1. The sums are
  // the same floats in the same order; only the global norm adds its squares in another order.
  for (const layout& l :
       {layout{1, 0, "1f1b", 2, 2}, layout{2, 4, "1f1b", 2, 2}, layout{2, 4, "dualpipe", 4},
        layout{2, 0, "dualpipe", 4, 2}, layout{1, 0, "1f1b", 1, 4}}) {
    const std::string what =
        fmt::format("pipeline {} expert {} data {} {}", l.pipeline, l.shards, l.data, l.schedule);
    const fs::path dir = scratch("zero");
    training_options plain_options, zero_options;
    plain_options.checkpoint_dir = dir / "plain";
    zero_options.checkpoint_dir = dir / "zero";
    const auto plain = train(make_topology(l), plain_options);
    // Buckets of 10,000 elements: every exchange goes in tens of them.
    const auto zero =
        train(make_topology(l, "zero = 1\nzero_bucket_elements = 10000\n"), zero_options);
    expect_close(zero, plain, 1e-6, what);
    const auto zero_weights = read_weights(dir / "zero" / checkpoint_name(3));
    const auto plain_weights = read_weights(dir / "plain" / checkpoint_name(3));
    ASSERT_EQ(zero_weights.size(), plain_weights.size()) << what;
    double worst = 0.0;
    for (const auto& [name, values] : plain_weights)
      for (std::size_t i = 0; i < values.size(); ++i)
        worst = std::max(worst, std::abs(zero_weights.at(name)[i] - values[i]));
    EXPECT_LE(worst, 1e-6) << what << ": the weights after 3 steps";
    // Every moment is written once either way; under ZeRO-1 the replicas of a rank keep equal
    // shares, and with data parallelism alone each keeps 1/data of the moments.
    const auto plain_bytes = optimizer_bytes(dir / "plain" / checkpoint_name(3));
    const auto zero_bytes = optimizer_bytes(dir / "zero" / checkpoint_name(3));
    std::int64_t plain_total = 0, zero_total = 0;
    for (const auto& [holder, bytes] : plain_bytes) plain_total += bytes;
    for (const auto& [holder, bytes] : zero_bytes) zero_total += bytes;
    EXPECT_EQ(zero_total, plain_total) << what;
    for (int r = 0; r < l.pipeline && l.data > 1; ++r) {
      const auto first = zero_bytes.at(fmt::format("stage{}.r0", r));
      for (int d = 1; d < l.data; ++d)
        EXPECT_NEAR(static_cast<double>(zero_bytes.at(fmt::format("stage{}.r{}", r, d))),
                    static_cast<double>(first), 0.01 * static_cast<double>(first))
            << what << ": stage " << r << " replica " << d;
    }
    if (l.pipeline == 1 && l.shards == 0) {
      for (int d = 0; d < l.data; ++d)
        EXPECT_NEAR(static_cast<double>(zero_bytes.at(fmt::format("stage0.r{}", d))),
                    static_cast<double>(plain_total) / l.data,
                    0.01 * static_cast<double>(plain_total))
            << what << ": replica " << d;
    }
  }
}

/// topologies/two-hosts.toml in one process (stage 0 and shards 0-1 on node0, stage 1 and shards
/// 2-3 on node1) for 3 short steps, with `overrides`.
training_result two_hosts(std::vector<std::string> overrides) {
  topology_load_options options;
  options.resolve_plugins = true;
  overrides.insert(overrides.end(), {"train.steps=3", "train.sequence_length=32"});
  options.overrides = std::move(overrides);
  loaded_topology loaded =
      load_topology(troupe::testing::source_dir() / "topologies" / "two-hosts.toml", options);
  loaded.topo.monitoring.metrics_host.clear();
  loaded.topo.control.host.clear();
  return train(loaded.topo);
}

TEST(Training, NodeLimitedRoutingKeepsEveryTokenOnMHosts) {
  // Unlimited, a token's 4 experts among 16 lie on both hosts at times, and the tokens of each
  // stage go to the other host's shards. With M = 1 every token stays on one host; with M = 2
  // (every host) the routing is the unlimited one, losses and loads alike.
  const auto free = two_hosts({});
  const auto one = two_hosts({"parallel.max_nodes_per_token=1"});
  const auto both = two_hosts({"parallel.max_nodes_per_token=2"});
  ASSERT_EQ(free.steps.size(), 3u);
  ASSERT_EQ(one.steps.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(free.steps[i].most_hosts_per_token, 2) << "step " << i + 1;
    EXPECT_EQ(one.steps[i].most_hosts_per_token, 1) << "step " << i + 1;
    EXPECT_GT(free.steps[i].tokens_across_hosts, one.steps[i].tokens_across_hosts);
    EXPECT_GT(one.steps[i].tokens_across_hosts, 0) << "some tokens still go to the other host";
    EXPECT_TRUE(std::isfinite(one.steps[i].loss));
    EXPECT_EQ(both.steps[i].loss, free.steps[i].loss);
    EXPECT_EQ(both.steps[i].load, free.steps[i].load);
  }
  RecordProperty("tokens_across_hosts_unlimited",
                 std::to_string(free.steps[0].tokens_across_hosts));
  RecordProperty("tokens_across_hosts_m1", std::to_string(one.steps[0].tokens_across_hosts));
}

/// `topo` for 4 steps straight (checkpoints in `dir`/whole), returned, and for 2 steps of 4
/// (`dir`/halves), into `stopped`.
training_result four_steps_and_two(topology topo, const fs::path& dir, training_result& stopped) {
  topo.train.steps = 4;
  training_options whole;
  whole.checkpoint_dir = dir / "whole";
  training_result uninterrupted = train(topo, whole);
  training_options first_half;
  first_half.checkpoint_dir = dir / "halves";
  first_half.stop_after = 2;
  stopped = train(topo, first_half);
  return uninterrupted;
}

TEST(Training, ZeroOneResumesAtAnotherDataParallelSize) {
  // 4 steps of 4 micro-batches as 2 replicas under ZeRO-1, straight; then 2 steps, and the last
  // 2 resumed as 4 replicas under ZeRO-1 and as 1 without it: the same global batch each time,
  // the moments re-cut from the pieces the 2 replicas wrote.
  const fs::path dir = scratch("zero-resume");
  training_result stopped;
  const auto uninterrupted =
      four_steps_and_two(make_topology({2, 0, "1f1b", 2, 2}, "zero = 1\n"), dir, stopped);
  ASSERT_EQ(uninterrupted.steps.size(), 4u);
  for (const layout& l :
       {layout{2, 0, "1f1b", 2, 2}, layout{2, 0, "1f1b", 1, 4}, layout{2, 0, "1f1b", 4, 1}}) {
    topology topo = make_topology(l, l.data > 1 ? "zero = 1\n" : "");
    topo.train.steps = 4;
    training_options second_half;
    second_half.resume = dir / "halves" / checkpoint_name(2);
    const auto resumed = train(topo, second_half);
    ASSERT_EQ(resumed.steps.size(), 2u) << "data " << l.data;
    for (std::size_t i = 0; i < 2; ++i)
      EXPECT_NEAR(resumed.steps[i].loss, uninterrupted.steps[i + 2].loss,
                  1e-6 * uninterrupted.steps[i + 2].loss)
          << "data " << l.data << ", step " << i + 3;
    if (l.data == 2) {  // the same layout resumes bit for bit
      EXPECT_EQ(resumed.steps[1].loss, uninterrupted.steps[3].loss);
    }
  }
}

TEST(Training, ResumeIsBitIdentical) {
  const fs::path dir = scratch("resume");
  topology topo = make_topology({2, 4, "dualpipe", 4}, "checkpoint_every = 2\n");
  topo.train.steps = 4;
  training_result stopped;
  const auto uninterrupted = four_steps_and_two(topo, dir, stopped);
  ASSERT_EQ(uninterrupted.steps.size(), 4u);
  EXPECT_EQ(stopped.outcome, training_outcome::stopped);
  EXPECT_EQ(stopped.last_step, 2);
  training_options second_half;
  second_half.checkpoint_dir = dir / "halves";
  second_half.resume = dir / "halves";  // its `latest`
  const auto resumed = train(topo, second_half);
  ASSERT_EQ(resumed.steps.size(), 2u);
  EXPECT_EQ(resumed.first_step, 2);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(resumed.steps[i].loss, uninterrupted.steps[i + 2].loss) << "step " << i + 3;
    EXPECT_EQ(resumed.steps[i].mtp_loss, uninterrupted.steps[i + 2].mtp_loss);
    EXPECT_EQ(resumed.steps[i].grad_norm, uninterrupted.steps[i + 2].grad_norm);
  }
  const auto a = read_weights(dir / "whole" / checkpoint_name(4));
  const auto b = read_weights(dir / "halves" / checkpoint_name(4));
  EXPECT_EQ(a, b);
}

TEST(Training, NonFiniteStopsWithoutTouchingTheLastCheckpoint) {
  const fs::path dir = scratch("nonfinite");
  // A learning rate of 1e30 sends the weights to infinity in the first update.
  topology topo = make_topology({2, 4, "1f1b", 2}, "checkpoint_every = 1\n");
  topo.train.learning_rate = 1e30;
  topo.train.min_learning_rate = 1e30;
  training_options options;
  options.checkpoint_dir = dir;
  const auto result = train(topo, options);
  EXPECT_EQ(result.outcome, training_outcome::non_finite);
  EXPECT_EQ(result.last_step, 1);
  EXPECT_THAT(result.message, ::testing::HasSubstr("step 2"));
  EXPECT_THAT(result.message, ::testing::HasSubstr("model.layers."));
  std::ifstream latest(dir / "latest");
  std::string name;
  std::getline(latest, name);
  EXPECT_EQ(name, "step-000001");
  EXPECT_FALSE(fs::exists(dir / "step-000002"));
}

TEST(Training, MetricsAreTheDocumentedOnesAndCountEveryRoutedToken) {
  auto metrics = std::make_shared<metrics_registry>();
  training_options options;
  options.metrics = metrics;
  const topology topo = make_topology({2, 4, "1f1b", 2});
  const auto result = train(topo, options);
  std::map<std::string, const prometheus::MetricFamily*> exported;
  const auto families = metrics->registry()->Collect();
  for (const auto& family : families) exported[family.name] = &family;

  std::set<std::string> documented;
  std::ifstream doc(troupe::testing::source_dir() / "monitoring/METRICS.md");
  std::string line, section;
  while (std::getline(doc, line)) {
    if (line.starts_with("## ")) section = line.substr(3);
    if (auto key = troupe::testing::table_key(line); key && section == "Training")
      documented.insert(*key);
  }
  ASSERT_GT(documented.size(), 10u);
  for (const auto& name : documented) EXPECT_TRUE(exported.count(name)) << name << " not exported";

  // Tokens routed: every token of every step goes to num_experts_per_tok experts per MoE layer.
  std::int64_t tokens = 0;
  for (const auto& s : result.steps) tokens += s.tokens;
  std::map<std::string, double> per_layer;
  for (const auto& m : exported.at("troupe_expert_tokens_routed_total")->metric)
    for (const auto& label : m.label)
      if (label.name == "layer") per_layer[label.value] += m.counter.value;
  EXPECT_EQ(per_layer.size(), 4u);  // layers 1-3 and the MTP block (layer 4)
  for (const auto& [layer, routed] : per_layer)
    EXPECT_EQ(routed, static_cast<double>(tokens * topo.model.num_experts_per_tok)) << layer;
  EXPECT_EQ(exported.at("troupe_router_bias")->metric.size(), 4u * 16u);
  EXPECT_EQ(exported.at("troupe_stage_busy_seconds_total")->metric.size(), 2u);
}

TEST(Training, Fp8TrainingTracksFp32) {
  // FP8 GEMMs (the fp8 plugin's exact CPU emulation) and FP8 dispatch / BF16 combine to the
  // expert shards: the losses stay within 1% of FP32's over 3 steps (measured: 0.1-0.3%).
  const auto fp32 = train(make_topology({2, 4, "1f1b", 2}));
  topology topo = make_topology({2, 4, "1f1b", 2});
  topo.gemm_precision = precision::fp8;
  const auto fp8 = train(topo);
  ASSERT_EQ(fp8.steps.size(), fp32.steps.size());
  for (std::size_t i = 0; i < fp8.steps.size(); ++i) {
    EXPECT_NE(fp8.steps[i].loss, fp32.steps[i].loss) << "fp8 changed nothing";
    EXPECT_LE(std::abs(fp8.steps[i].loss - fp32.steps[i].loss), 0.01 * fp32.steps[i].loss);
  }
}

TEST(Training, BadResumeDirectoryIsAClearError) {
  const fs::path dir = scratch("bad-resume");
  training_options options;
  options.resume = dir;
  try {
    train(make_topology({1, 0, "1f1b", 2}), options);
    FAIL() << "expected an error";
  } catch (const checkpoint_error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("not a checkpoint"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr(dir.string()));
  }
}

}  // namespace
