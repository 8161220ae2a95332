#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kernels/cpu/gemm.hpp"
#include "runtime/core/install_layout.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/cuda_gemm.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/model/flops.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

struct bench_options {
  std::string config = "small";
  std::int64_t batch = 0;
  std::int64_t length = 0;
  int steps = 3;
  int threads = 0;
  std::string precision = "fp32";
  std::string device = "cpu";
};

/// The gemm plugin of `precision`: none for fp32 (the runtime's own) and bf16 (the runtime's
/// cuBLASLt BF16, GPU only), the FP8 plugin's for fp8.
std::unique_ptr<gemm_instance> precision_gemm(plugin_registry& registry,
                                              const std::string& precision, device where) {
  std::unique_ptr<gemm_instance> fp8;
  if (precision == "fp8")
    fp8 = std::make_unique<gemm_instance>(registry.load("fp8", {plugin_kind::gemm}),
                                          instance_options{});
  else if (precision == "bf16" && !where.is_cuda())
    fail("--precision bf16: BF16 computes on a GPU's tensor cores; add --device cuda:N");
  else if (precision != "fp32" && precision != "bf16")
    fail("--precision: use fp32, bf16 or fp8, not {}", precision);
  return fp8;
}

/// `batch` sequences of `length` random tokens (seeded), each target the next token.
model_batch random_batch(std::int64_t batch, std::int64_t length, std::int64_t vocab_size) {
  model_batch input;
  input.tokens = tensor::empty(dtype::i32, {batch, length});
  input.targets = tensor::empty(dtype::i32, {batch, length});
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(vocab_size - 1));
  for (std::int64_t i = 0; i < batch * length; ++i)
    input.tokens.data_as<std::int32_t>()[i] = token(rng);
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t i = 0; i < length; ++i)
      input.targets.data_as<std::int32_t>()[b * length + i] =
          i + 1 < length ? input.tokens.data_as<std::int32_t>()[b * length + i + 1] : -1;
  return input;
}

/// The best times of the timed steps, and the MLA statistics of the warm-up step.
struct step_times {
  double best = 1e30;
  double forward_best = 1e30;
  double median = 0.0;
  std::string mla_statistics;
  /// Minor page faults (pages the kernel mapped and zeroed) in the warm-up step and the median
  /// of the timed ones; a step that reuses its memory faults almost none.
  long warmup_faults = 0, median_faults = 0;
  long peak_rss_mib = 0;  ///< the process's high-water resident memory after the steps
};

/// Minor page faults of the process so far.
long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

/// Runs one warm-up step and `steps` timed steps of forward + backward.
step_times time_steps(model_runner& runner, exec_context& context, const model_batch& input,
                      int steps) {
  step_times times;
  std::vector<double> all;
  const device where = context.where();
  const auto wait = [&] {  // a GPU step is timed to the end of its work, not of its launches
    if (where.is_cuda()) cuda::synchronize_stream(context.stream(), where.index);
  };
  std::vector<long> faults;
  for (int step = 0; step <= steps; ++step) {  // step 0 warms up
    const long faults_before = minor_faults();
    {
      const context_stream_scope on_stream(context);
      runner.parameters().zero_grads(&context.pool());
      context.gradients_zeroed();
    }
    wait();
    const auto start = clock_type::now();
    runner.forward(context, step, input);
    wait();
    const auto middle = clock_type::now();
    if (step == 0) times.mla_statistics = runner.layers().front()->attention().statistics();
    runner.backward(context, step, tensor(), 1.0f);
    wait();
    const auto end = clock_type::now();
    faults.push_back(minor_faults() - faults_before);
    if (step == 0) continue;
    all.push_back(std::chrono::duration<double>(end - start).count());
    times.best = std::min(times.best, all.back());
    times.forward_best =
        std::min(times.forward_best, std::chrono::duration<double>(middle - start).count());
  }
  std::sort(all.begin(), all.end());
  if (!all.empty()) times.median = all[all.size() / 2];
  times.warmup_faults = faults.front();
  std::sort(faults.begin() + 1, faults.end());
  if (faults.size() > 1) times.median_faults = faults[1 + (faults.size() - 1) / 2];
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  times.peak_rss_mib = usage.ru_maxrss / 1024;
  return times;
}

void print_step_times(const step_times& times, int steps, double tokens) {
  fmt::print(
      "forward + backward: {:.1f} ms per step (forward {:.1f} ms) min of {}, median {:.1f} ms; "
      "{:.0f} tokens/s at the min\n",
      times.best * 1e3, times.forward_best * 1e3, steps, times.median * 1e3, tokens / times.best);
  fmt::print(
      "page faults per step: {} in the warm-up, median {} in the timed steps ({:.1f} MiB of "
      "fresh pages); peak resident memory {} MiB\n",
      times.warmup_faults, times.median_faults,
      static_cast<double>(times.median_faults) * 4096.0 / (1 << 20), times.peak_rss_mib);
}

/// The MLA activation bytes that an attention layer keeps, and what it saves, from its statistics.
void print_mla_activations(const std::string& mla_statistics) {
  const auto stats = nlohmann::json::parse(mla_statistics);
  const double kept = stats["saved_activation_bytes"].get<double>();
  const double recomputed = stats["recomputed_activation_bytes"].get<double>();
  fmt::print(
      "MLA activations per layer and micro-batch: {:.2f} MiB kept; storing q, k, v would add "
      "{:.2f} MiB ({:.0f}% saved)\n",
      kept / 1048576.0, recomputed / 1048576.0, 100.0 * recomputed / (kept + recomputed));
}

int bench(const bench_options& options) {
  const fs::path file = bench_model_config(options.config);
  const model_config config = load_model_config(file);
  const std::int64_t batch = options.batch > 0 ? options.batch : (options.config == "tiny" ? 4 : 2);
  const std::int64_t length =
      options.length > 0 ? options.length : (options.config == "tiny" ? 64 : 512);
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  thread_pool pool(threads);
  const device where = parse_device(options.device);
  if (where.is_cuda()) cuda::require_device(where.index);
  plugin_registry registry;
  const auto plugins = load_model_plugins(registry, config);
  const std::unique_ptr<gemm_instance> fp8 = precision_gemm(registry, options.precision, where);
  exec_context context(where, pool,
                       fp8                           ? fp8->provider()
                       : options.precision == "bf16" ? cuda_bf16_gemm_provider()
                                                     : nullptr);
  model_options model{};
  model.where = where;
  model_runner runner(config, {}, plugins, model);
  const auto init_start = std::chrono::steady_clock::now();
  runner.parameters().initialize(1234, &pool);
  const double init_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - init_start).count();
  const model_batch input = random_batch(batch, length, config.vocab_size);

  fmt::print(
      "model {} ({}): {} layers, hidden {}, {} routed experts top-{}, MTP depth {}, {:.1f}M "
      "parameters\n",
      options.config, file.string(), config.num_hidden_layers, config.hidden_size,
      config.n_routed_experts, config.num_experts_per_tok, config.num_nextn_predict_layers,
      static_cast<double>(runner.parameters().element_count()) / 1e6);
  fmt::print(
      "batch {} x {} tokens on {}, {} threads, precision {}; parameters initialised in {:.2f} s\n",
      batch, length, options.device, threads, options.precision, init_seconds);
  const double tokens = static_cast<double>(batch * length);
  const double flops = model_flops(config, length, true).training() * tokens;
  if (where.is_cuda()) {
    const step_times times = time_steps(runner, context, input, options.steps);
    const double peak = bf16_peak_tflops(where.index);
    const double achieved = flops / times.best / 1e12;
    print_step_times(times, options.steps, tokens);
    fmt::print(
        "model FLOPs: {:.2f} GFLOP per step -> {:.1f} TFLOP/s, MFU {:.1f}% of the BF16 GEMM peak "
        "measured now ({:.1f} TFLOP/s, cuBLASLt 8192^3)\n",
        flops / 1e9, achieved, 100.0 * achieved / peak, peak);
    print_mla_activations(times.mla_statistics);
    return exit_ok;
  }
  // The reference is measured before and after the model (best of both), so a change in the
  // machine's state during the run shows up in the reference too.
  sgemm_reference sgemm = measure_sgemm(pool);
  const step_times times = time_steps(runner, context, input, options.steps);
  sgemm.merge(measure_sgemm(pool));
  const double reference = sgemm.best;
  fmt::print(
      "sgemm on the worker pool (1024^3 and 2048^3, 8 runs each, before and after): best {:.1f} "
      "GFLOP/s, median {:.1f}, slowest {:.1f}\n",
      sgemm.best, sgemm.median, sgemm.worst);
  const double achieved = flops / times.best / 1e9;
  print_step_times(times, options.steps, tokens);
  fmt::print("model FLOPs: {:.2f} GFLOP per step -> {:.1f} GFLOP/s = {:.2f} of sgemm\n",
             flops / 1e9, achieved, achieved / reference);
  print_mla_activations(times.mla_statistics);
  return exit_ok;
}

}  // namespace

namespace {

std::vector<double> sgemm_runs(thread_pool& pool, std::int64_t n, int runs) {
  std::vector<float> a(static_cast<std::size_t>(n * n), 0.5f), b(a.size(), 0.25f),
      c(a.size(), 0.0f);
  const kernels::cpu::gemm_shape shape{false, true, n, n, n, n, n, n};
  std::vector<double> gflops;
  for (int i = 0; i <= runs; ++i) {  // run 0 warms up
    const auto start = clock_type::now();
    kernels::cpu::sgemm_on_pool(pool.abi(), shape, 1.0f, a.data(), b.data(), 0.0f, c.data());
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    if (i > 0) gflops.push_back(2.0 * static_cast<double>(n * n * n) / seconds / 1e9);
  }
  return gflops;
}

}  // namespace

void sgemm_reference::merge(const sgemm_reference& other) {
  best = std::max(best, other.best);
  median = std::max(median, other.median);
  worst = worst == 0.0 ? other.worst : std::min(worst, other.worst);
}

sgemm_reference measure_sgemm(thread_pool& pool) {
  std::vector<double> runs = sgemm_runs(pool, 1024, 8);
  const std::vector<double> large = sgemm_runs(pool, 2048, 8);
  runs.insert(runs.end(), large.begin(), large.end());
  std::sort(runs.begin(), runs.end());
  return {runs.back(), runs[runs.size() / 2], runs.front()};
}

double sgemm_gflops(thread_pool& pool) {
  return measure_sgemm(pool).best;
}

void add_bench_command(CLI::App& app, int& exit_code) {
  auto* bench_group = app.add_subcommand("bench", "Measure troupe's speed");
  bench_group->require_subcommand(1);
  auto options = std::make_shared<bench_options>();
  auto* model = bench_group->add_subcommand("model",
                                            "Forward + backward of a model on the CPU or a GPU: "
                                            "time per step, tokens/s, model FLOP/s against the "
                                            "sgemm (CPU) or BF16 GEMM (GPU) throughput measured "
                                            "in the same run");
  model->add_option("--config", options->config,
                    "tiny, small (hidden 512, 8 layers, 64 experts top-6) or a config.json path");
  model
      ->add_option("--batch", options->batch,
                   "Sequences per step (default: 4 for tiny, 2 for small)")
      ->check(within({1, 1 << 16}));
  model
      ->add_option("--length", options->length,
                   "Tokens per sequence (default: 64 for tiny, 512 for small)")
      ->check(within({1, 1 << 20}));
  model->add_option("--steps", options->steps, "Timed steps after one warm-up (default 3)")
      ->check(within({1, 1 << 20}));
  model->add_option("--threads", options->threads, "Worker threads (default: one per core)")
      ->check(within(thread_bounds));
  model->add_option("--precision", options->precision,
                    "fp32, bf16 (GPU only) or fp8 (the FP8 plugin: its CPU emulation on the CPU)");
  model->add_option("--device", options->device,
                    "cpu (default) or cuda:N: the model on that GPU, its MFU against a BF16 "
                    "cuBLASLt GEMM measured in the same run");
  model->callback([options, &exit_code] { exit_code = bench(*options); });
  add_bench_train_command(*bench_group, exit_code);
  add_bench_gemm_command(*bench_group, exit_code);
  add_bench_attention_command(*bench_group, exit_code);
  add_bench_experts_command(*bench_group, exit_code);
  add_bench_sgemm_command(*bench_group, exit_code);
  add_bench_transport_command(*bench_group, exit_code);
  add_bench_dispatch_command(*bench_group, exit_code);
  add_bench_generate_command(*bench_group, exit_code);
}

}  // namespace troupe::cli
