// troupe bench train: training throughput on actors (tokens/s, model GFLOP/s against sgemm
// measured in the same run) and the actors' overhead per step against a direct loop that runs the
// same model, micro-batches and optimizer in one thread of calls.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "kernels/dispatch/op_timing.hpp"
#include "runtime/core/install_layout.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/cuda_gemm.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/model/flops.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/optim/adamw.hpp"
#include "runtime/optim/gradient_norm.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/train/training_job.hpp"
#include "runtime/train/training_roles.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/topology_input.hpp"

namespace troupe::cli {

namespace {

using clock_type = std::chrono::steady_clock;

struct bench_train_options {
  std::string config = "tiny";
  std::string topology;
  std::vector<std::string> overrides;
  int steps = 8;
  int threads = 0;
  std::string device = "cpu";  ///< where the direct loop runs
  bool direct_only = false;    ///< skip the actors' run
  int ops = 24;                ///< how many of the heaviest ops to print
  bool op_shapes = false;      ///< dense GEMMs counted per shape
};

/// Seconds per step of the direct loop, and of its phases (medians).
struct direct_timing {
  double step = 0.0, forward = 0.0, backward = 0.0, optimizer = 0.0;
  /// GPU milliseconds per op class (kernels/dispatch/op_timing.hpp), medians over the steps.
  std::array<double, kernels::op_class_count> classes{};
  /// GPU milliseconds per function that opened an op scope, means over the steps.
  std::map<std::string, double> functions;
  bool has_classes = false;
  /// Device memory each decoder layer's forward kept (model_output::layer_memory), micro-batch 0
  /// of the first timed step.
  std::vector<std::uint64_t> layer_memory;
};

/// Activation memory per decoder layer, as the memory pool counted it around each forward.
void print_layer_memory(const std::vector<std::uint64_t>& bytes, const topology& topo,
                        const std::string& device) {
  if (bytes.empty()) return;
  const double mib = 1024.0 * 1024.0;
  const std::int64_t dense = std::min<std::int64_t>(topo.model.first_k_dense_replace,
                                                    static_cast<std::int64_t>(bytes.size()));
  std::uint64_t total = 0, moe_min = UINT64_MAX, moe_max = 0, moe_sum = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    total += bytes[i];
    if (static_cast<std::int64_t>(i) < dense) continue;
    moe_min = std::min(moe_min, bytes[i]);
    moe_max = std::max(moe_max, bytes[i]);
    moe_sum += bytes[i];
  }
  const auto moe = static_cast<std::int64_t>(bytes.size()) - dense;
  fmt::print(
      "activation memory per layer on {} (memory pool, one micro-batch of {} x {} tokens kept "
      "for backward): ",
      device, topo.train.micro_batch_size, topo.train.sequence_length);
  if (dense > 0) fmt::print("dense {:.1f} MiB, ", static_cast<double>(bytes[0]) / mib);
  if (moe > 0)
    fmt::print("MoE {:.1f} MiB (min {:.1f}, max {:.1f}), ",
               static_cast<double>(moe_sum) / static_cast<double>(moe) / mib,
               static_cast<double>(moe_min) / mib, static_cast<double>(moe_max) / mib);
  fmt::print("{} layers {:.2f} GiB\n", bytes.size(), static_cast<double>(total) / (mib * 1024.0));
}

/// The same work as one training step without actors: every micro-batch's forward and backward
/// through one whole-model runner, then AdamW, on `where`. Seconds per step and per phase
/// (medians of `steps`; on a GPU each phase ends with a wait for its stream).
direct_timing direct_step_seconds(const topology& topo, plugin_registry& registry,
                                  thread_pool& pool, std::int64_t micro_batches, int steps,
                                  device where) {
  const model_config& config = topo.model;
  model_plugins plugins = load_model_plugins(registry, config);
  // The topology's precision, as the actors compute it: the fp8 plugin's GEMMs under fp8, the
  // runtime's BF16 provider under bf16 (GPU), else the runtime's FP32 one.
  std::unique_ptr<gemm_instance> fp8;
  if (auto library = load_gemm_plugin(registry, topo))
    fp8 = std::make_unique<gemm_instance>(library, instance_options{});
  exec_context context(where, pool,
                       fp8 ? fp8->provider()
                       : where.is_cuda() && topo.gemm_precision == precision::bf16
                           ? cuda_bf16_gemm_provider()
                           : nullptr);
  model_options options{topo.train.mtp_weight, true};
  options.where = where;
  model_runner runner(config, {}, plugins, options);
  runner.parameters().initialize(static_cast<std::uint64_t>(topo.train.seed), &pool);
  adamw optimizer(
      {topo.train.beta1, topo.train.beta2, topo.train.epsilon, topo.train.weight_decay});
  optimizer.attach(runner.parameters());
  const std::int64_t b = topo.train.micro_batch_size, l = topo.train.sequence_length;
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::int32_t> token(0, 255);
  model_batch input;
  input.tokens = tensor::empty(dtype::i32, {b, l});
  input.targets = tensor::empty(dtype::i32, {b, l});
  for (std::int64_t i = 0; i < b * l; ++i) {
    input.tokens.data_as<std::int32_t>()[i] = token(rng);
    input.targets.data_as<std::int32_t>()[i] = token(rng);
  }
  const auto wait = [&] {
    if (where.is_cuda()) cuda::synchronize_stream(context.stream(), where.index);
  };
  const auto since = [](clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
  };
  std::vector<double> times, forwards, backwards, optimizers;
  std::array<std::vector<double>, kernels::op_class_count> classes;
  std::map<std::string, double> functions;
  std::vector<std::uint64_t> layer_memory;
  // NOTES: the breakdown brackets every op with CUDA events; the step times come from a second
  // round of steps without them, so the events cost the figures nothing.
  const bool breakdown = where.is_cuda();
  for (int step = 0; step <= steps + (breakdown ? steps : 0); ++step) {
    const bool timing_ops = breakdown && step > steps;
    kernels::op_timing::enable(timing_ops);
    if (timing_ops) (void)kernels::op_timing::collect();
    const auto start = clock_type::now();
    double forward = 0.0, backward = 0.0;
    for (std::int64_t m = 0; m < micro_batches; ++m) {
      auto phase = clock_type::now();
      const model_output out = runner.forward(context, m, input);
      if (step == 1 && m == 0) layer_memory = out.layer_memory;
      wait();
      forward += since(phase);
      phase = clock_type::now();
      runner.backward(context, m, tensor(), 1.0f / static_cast<float>(micro_batches));
      wait();
      backward += since(phase);
    }
    const auto phase = clock_type::now();
    {
      const context_stream_scope on_stream(context);
      // The global norm and its clip scale, as a pipeline rank and the coordinator compute them.
      gradient_summary summary;
      {
        const kernels::op_scope timing(context.abi(), kernels::op_class::optimizer,
                                       "gradient_norm");
        add_gradients(runner.parameters().all(), {}, summary, &context);
      }
      const double norm = std::sqrt(summary.norm_squared), clip = topo.train.grad_clip;
      optimizer.step(1e-4, clip > 0.0 && norm > clip ? clip / (norm + 1e-6) : 1.0, step + 1,
                     context);
      runner.parameters().zero_grads(&pool, where.is_cuda());
      context.gradients_zeroed();
      wait();
    }
    if (timing_ops) {
      const auto ms = kernels::op_timing::collect();
      for (std::size_t c = 0; c < ms.classes.size(); ++c) classes[c].push_back(ms.classes[c]);
      for (const auto& [function, time] : ms.functions)
        functions[function] += time / static_cast<double>(steps);
    } else if (step > 0) {
      times.push_back(since(start));
      forwards.push_back(forward);
      backwards.push_back(backward);
      optimizers.push_back(since(phase));
    }
  }
  kernels::op_timing::enable(false);
  direct_timing result;
  result.step = median_of(times);
  result.forward = median_of(forwards);
  result.backward = median_of(backwards);
  result.optimizer = median_of(optimizers);
  result.layer_memory = std::move(layer_memory);
  if (breakdown) {
    result.has_classes = true;
    for (std::size_t c = 0; c < classes.size(); ++c) result.classes[c] = median_of(classes[c]);
    result.functions = std::move(functions);
  }
  return result;
}

int bench_train(const bench_train_options& options) {
  plugin_registry registry;
  std::vector<std::string> overrides = {"monitoring.metrics=\"\"", "train.checkpoint_every=0",
                                        fmt::format("train.steps={}", options.steps + 2)};
  if (options.config == "small")
    overrides.insert(overrides.end(),
                     {"model.config=\"models/small-512/config.json\"", "train.sequence_length=512",
                      "train.micro_batch_size=1", "stages[0].layers=\"0-7\""});
  else if (options.config != "tiny")
    overrides.push_back(fmt::format("model.config=\"{}\"", options.config));
  overrides.insert(overrides.end(), options.overrides.begin(), options.overrides.end());
  auto loaded = load_for_command(topology_or_default(options.topology), registry, overrides);
  if (!loaded) return exit_bad_input;
  const topology& topo = loaded->topo;
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  try {
    thread_pool pool(threads);
    sgemm_reference sgemm = measure_sgemm(pool);

    training_options job_options;
    job_options.threads = threads;
    job_options.checkpoint_at_end = false;
    job_options.checkpoints = false;  // a benchmark writes none, so it needs no disk for them
    job_options.keep_steps = true;
    training_result result;
    if (!options.direct_only) {  // the job's memory is given back before the direct loop
      training_job job(topo, registry, job_options);
      result = job.run();
    }
    std::vector<double> times;
    for (std::size_t i = 2; i < result.steps.size(); ++i)
      times.push_back(result.steps[i].step_seconds);
    const double actor_step = options.direct_only ? 0.0 : median_of(times);
    const std::int64_t micro_batches = options.direct_only
                                           ? std::max(1, topo.schedule.micro_batches)
                                           : result.steps.back().micro_batches;
    kernels::op_timing::enable_details(options.op_shapes);
    const direct_timing direct =
        direct_step_seconds(topo, registry, pool, micro_batches, std::max(3, options.steps / 2),
                            parse_device(options.device));
    const double direct_step = direct.step;
    sgemm.merge(measure_sgemm(pool));
    const double reference = sgemm.best;

    const double tokens = static_cast<double>(micro_batches * topo.train.micro_batch_size *
                                              topo.train.sequence_length);
    const double flops =
        model_flops(topo.model, topo.train.sequence_length, true).training() * tokens;
    fmt::print(
        "{}: {} layers, hidden {}, {} routed experts top-{}; pipeline {}, {} expert "
        "shards, data {}, {} schedule\n",
        topo.file.string(), topo.model.num_hidden_layers, topo.model.hidden_size,
        topo.model.n_routed_experts, topo.model.num_experts_per_tok, topo.pipeline,
        topo.expert_shards.size(), topo.data, to_string(topo.schedule.kind));
    fmt::print("step: {} micro-batches x {} x {} tokens = {:.0f} tokens; {} threads\n",
               micro_batches, topo.train.micro_batch_size, topo.train.sequence_length, tokens,
               threads);
    fmt::print(
        "sgemm on the worker pool (1024^3 and 2048^3, 8 runs each, before and after): best {:.1f} "
        "GFLOP/s, median {:.1f}, slowest {:.1f}\n",
        sgemm.best, sgemm.median, sgemm.worst);
    if (!options.direct_only)
      fmt::print(
          "actors: {:.1f} ms per step (median of {}), {:.0f} tokens/s, {:.2f} GFLOP/s = "
          "{:.2f} of sgemm\n",
          actor_step * 1e3, times.size(), tokens / actor_step, flops / actor_step / 1e9,
          flops / actor_step / 1e9 / reference);
    if (!options.direct_only) {
      double sum = 0.0;
      std::string each;
      for (const double t : times) {
        sum += t;
        each += fmt::format("{}{:.1f}", each.empty() ? "" : " ", t * 1e3);
      }
      fmt::print("actors' steps (ms): {}; mean {:.1f}\n", each,
                 sum / static_cast<double>(times.size()) * 1e3);
      // Medians per phase over the same steps, as the coordinator timed them.
      const auto phase = [&](double step_record::phase_seconds::*field) {
        std::vector<double> values;
        for (std::size_t i = 2; i < result.steps.size(); ++i)
          values.push_back(result.steps[i].phases.*field * 1e3);
        return median_of(values);
      };
      using ps = step_record::phase_seconds;
      fmt::print(
          "actors' phases (ms, medians): data {:.2f}, forward+backward {:.1f} (the ranks' ops "
          "{:.1f}), gradient norm {:.2f}, optimizer {:.2f}, balancer {:.2f}\n",
          phase(&ps::data), phase(&ps::forward_backward), phase(&ps::rank_busy),
          phase(&ps::gradients), phase(&ps::optimizer), phase(&ps::balancer));
    }
    fmt::print(
        "direct loop (one runner, no actors, experts in the layer): {:.1f} ms per step, "
        "{:.0f} tokens/s, {:.2f} of sgemm\n",
        direct_step * 1e3, tokens / direct_step, flops / direct_step / 1e9 / reference);
    fmt::print(
        "direct loop phases on {}: forward {:.1f} ms, backward {:.1f} ms, optimizer {:.1f} ms\n",
        options.device, direct.forward * 1e3, direct.backward * 1e3, direct.optimizer * 1e3);
    if (!options.direct_only)
      fmt::print("actor overhead: {:.1f} ms per step ({:.1f}% of the direct step)\n",
                 (actor_step - direct_step) * 1e3,
                 100.0 * (actor_step - direct_step) / direct_step);
    if (direct.has_classes) {
      const device where = parse_device(options.device);
      const double peak = bf16_peak_tflops(where.index);
      const double model_tflops = flops / direct_step / 1e12;
      fmt::print(
          "model FLOPs on {} ({}): {:.1f} TFLOP/s, MFU {:.1f}% of the BF16 GEMM peak measured now "
          "({:.1f} TFLOP/s, cuBLASLt 8192^3)\n",
          options.device, to_string(topo.gemm_precision), model_tflops, 100.0 * model_tflops / peak,
          peak);
      fmt::print("time per op class on {} (GPU time of each class, median per step):\n",
                 options.device);
      double accounted = 0.0;
      for (std::size_t c = 0; c < direct.classes.size(); ++c) {
        accounted += direct.classes[c];
        fmt::print("  {:<30} {:8.2f} ms  {:5.1f}%\n",
                   kernels::name(static_cast<kernels::op_class>(c)), direct.classes[c],
                   100.0 * direct.classes[c] / (direct_step * 1e3));
      }
      const double rest = direct_step * 1e3 - accounted;
      fmt::print("  {:<30} {:8.2f} ms  {:5.1f}%\n", "other (waits, gaps, host work)", rest,
                 100.0 * rest / (direct_step * 1e3));
      if (!options.direct_only)
        fmt::print("  {:<30} {:8.2f} ms  {:5.1f}%  (actors against the direct loop)\n",
                   "communication with CPU roles", (actor_step - direct_step) * 1e3,
                   100.0 * (actor_step - direct_step) / (direct_step * 1e3));
      print_layer_memory(direct.layer_memory, topo, options.device);
      std::vector<std::pair<double, std::string>> heaviest;
      for (const auto& [function, time] : direct.functions) heaviest.emplace_back(time, function);
      std::sort(heaviest.rbegin(), heaviest.rend());
      if (heaviest.size() > static_cast<std::size_t>(options.ops))
        heaviest.resize(static_cast<std::size_t>(options.ops));
      fmt::print("heaviest ops on {} (GPU time per step, mean):\n", options.device);
      for (const auto& [time, function] : heaviest)
        fmt::print("  {:<58} {:8.2f} ms  {:5.1f}%\n", function, time,
                   100.0 * time / (direct_step * 1e3));
    }
    return exit_ok;
  } catch (const troupe::error& e) {
    fmt::print(stderr, "troupe bench train: {}\n", e.what());
    return exit_bad_input;
  }
}

}  // namespace

void add_bench_train_command(CLI::App& bench_group, int& exit_code) {
  auto options = std::make_shared<bench_train_options>();
  auto* command = bench_group.add_subcommand(
      "train",
      "Training steps on actors: tokens/s, model GFLOP/s against sgemm in the same run, and the "
      "actor overhead per step against a direct loop");
  command->add_option("--config", options->config,
                      "tiny (the topology's model), small (hidden 512, 8 layers, 64 experts, "
                      "512-token sequences) or a config.json path");
  command->add_option("--topology", options->topology, "Topology (default: the shipped tiny.toml)");
  command->add_option("--set", options->overrides, "Override a topology key, KEY=VALUE")
      ->allow_extra_args(false);
  command->add_option("--steps", options->steps, "Timed steps after 2 warm-up steps (default 8)")
      ->check(within({1, 1 << 20}));
  command->add_option("--threads", options->threads, "Worker threads (default: one per core)")
      ->check(within(thread_bounds));
  command->add_option("--device", options->device,
                      "Where the direct loop runs: cpu (default) or cuda:N (the actors run where "
                      "the topology places them)");
  command->add_flag("--direct-only", options->direct_only,
                    "Time only the direct loop (no actors, no actor overhead)");
  command->add_option("--ops", options->ops, "How many of the heaviest ops to print (default 24)")
      ->check(within({1, 1 << 20}));
  command->add_flag("--op-shapes", options->op_shapes,
                    "Count the dense GEMMs per shape (m x n x k, transposes, operand type)");
  command->callback([options, &exit_code] { exit_code = bench_train(*options); });
}

}  // namespace troupe::cli
