// `troupe bench generate`: prefill and decode throughput of continuous batching over MLA's latent
// cache (runtime/inference/batch_decoder.hpp) for a model config with random weights: for each
// batch size, that many sequences of --prompt-tokens random tokens read in one step (prefill)
// and then --new-tokens greedy tokens each, one step per token (decode). Prints the medians over
// --repeat runs and the cache's bytes per token, measured (the pool's allocation on a GPU, the
// pool's size on the CPU) and from the formula. tools/reference/bench_generate_hf.py measures
// transformers' generate on the same model shape for the ratio.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "kernels/dispatch/op_timing.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/install_layout.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/memory_pool.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/inference/batch_decoder.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

struct bench_generate_options {
  std::string config = "small";
  std::vector<std::int64_t> batches{1, 8, 32};
  std::int64_t prompt_tokens = 128, new_tokens = 32;
  int repeat = 3, threads = 0;
  std::string device = "cpu", cache_dtype = "f32";
  bool json = false;
};

struct run_times {
  double prefill = 0.0, decode = 0.0;  // seconds
};

/// `batch` requests of --prompt-tokens random byte tokens (seeded) and --new-tokens greedy tokens
/// each, without EOS: every sequence runs to the end.
void add_requests(batch_decoder& decoder, std::int64_t batch, const bench_generate_options& o,
                  std::int64_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::int32_t> token(
      0, static_cast<std::int32_t>(std::min<std::int64_t>(vocab, 256) - 1));
  for (std::int64_t b = 0; b < batch; ++b) {
    generation_request request;
    request.prompt.resize(static_cast<std::size_t>(o.prompt_tokens));
    for (auto& t : request.prompt) t = token(rng);
    request.max_new_tokens = o.new_tokens;
    decoder.add(request);
  }
}

/// One run: `batch` sequences read their prompts in one step, then decode to the end.
run_times run_batch(cached_model& model, latent_cache& cache, const exec_context& context,
                    std::int64_t batch, const bench_generate_options& o, unsigned seed) {
  batch_decoder decoder(model, cache, context);
  add_requests(decoder, batch, o, model.config().vocab_size, seed);
  run_times times;
  auto start = clock_type::now();
  decoder.step();
  times.prefill = std::chrono::duration<double>(clock_type::now() - start).count();
  start = clock_type::now();
  while (decoder.active() > 0) decoder.step();
  times.decode = std::chrono::duration<double>(clock_type::now() - start).count();
  return times;
}

/// On a GPU: the decode steps' latent attention (op timing's CUDA events around
/// kernels::ops::latent_attention) against the cache bytes they read, each sequence's positions
/// of every layer once, and a device-to-device copy's bandwidth (read + write) in the same run.
void print_attention_bandwidth(cached_model& model, latent_cache& cache,
                               const exec_context& context, std::int64_t batch,
                               const bench_generate_options& o) {
  batch_decoder decoder(model, cache, context);
  add_requests(decoder, batch, o, model.config().vocab_size, 5);
  decoder.step();  // the prompts
  kernels::op_timing::enable(true);
  (void)kernels::op_timing::collect();
  while (decoder.active() > 0) decoder.step();
  const auto timed = kernels::op_timing::collect();
  kernels::op_timing::enable(false);
  double attention_ms = 0.0;
  for (const auto& [function, ms] : timed.functions)
    if (function.find("latent_attention") != std::string::npos) attention_ms += ms;
  // Decode step k (from 0) reads positions 0..P+k of each sequence in every layer.
  const latent_cache_shape& shape = cache.shape();
  double positions = 0.0;
  for (std::int64_t k = 0; k + 1 < o.new_tokens; ++k)
    positions += static_cast<double>(o.prompt_tokens + k + 1);
  const double bytes =
      positions * static_cast<double>(batch) *
      static_cast<double>(model.config().num_hidden_layers) *
      static_cast<double>(shape.width() * static_cast<std::int64_t>(size_of(shape.type)));
  // The reference: 1 GiB copied device to device, 10 times after one warm-up.
  const std::int64_t copy_bytes = std::int64_t{1} << 30;
  tensor from = tensor::zeros(dtype::u8, {copy_bytes}, context.where());
  tensor to = tensor::empty(dtype::u8, {copy_bytes}, context.where());
  to.copy_from(from);
  const auto start = clock_type::now();
  for (int i = 0; i < 10; ++i) to.copy_from(from);
  const double copy_seconds = std::chrono::duration<double>(clock_type::now() - start).count() / 10;
  const double copy_gbs = 2.0 * static_cast<double>(copy_bytes) / copy_seconds / 1e9;
  const double attention_gbs = attention_ms > 0.0 ? bytes / (attention_ms / 1e3) / 1e9 : 0.0;
  fmt::print(
      "decode attention at batch {}: {:.3f} ms over {} steps for {:.1f} MB of cache rows -> {:.1f} "
      "GB/s = {:.3f} of a device-to-device copy ({:.1f} GB/s read + write, 1 GiB, same run)\n",
      batch, attention_ms, o.new_tokens - 1, bytes / 1e6, attention_gbs, attention_gbs / copy_gbs,
      copy_gbs);
}

int bench_generate(const bench_generate_options& o) {
  const fs::path file = bench_model_config(o.config);
  const model_config config = load_model_config(file);
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  thread_pool pool(threads);
  const device where = parse_device(o.device);
  if (where.is_cuda()) cuda::require_device(where.index);
  plugin_registry registry;
  model_options options;
  options.where = where;
  options.mtp = false;
  model_runner runner(config, {}, load_model_plugins(registry, config), options);
  runner.parameters().initialize(1234, &pool);
  exec_context context(where, pool);
  cached_model model(runner);

  const latent_cache_shape shape =
      model.cache_shape(o.cache_dtype == "bf16" ? dtype::bf16 : dtype::f32, 64);
  const std::int64_t largest = *std::max_element(o.batches.begin(), o.batches.end());
  const std::int64_t per_sequence =
      (o.prompt_tokens + o.new_tokens + shape.block_tokens - 1) / shape.block_tokens;
  const auto budget = static_cast<std::uint64_t>(largest * per_sequence * shape.bytes_per_block());
  const std::uint64_t before =
      where.is_cuda() ? cuda::memory_pool::on(where.index).statistics().in_use : 0;
  latent_cache cache(shape, budget, where);
  const std::uint64_t allocated =
      where.is_cuda() ? cuda::memory_pool::on(where.index).statistics().in_use - before
                      : static_cast<std::uint64_t>(cache.total_blocks() * shape.bytes_per_block());
  const double measured_per_token = static_cast<double>(allocated) /
                                    static_cast<double>(cache.total_blocks() * shape.block_tokens);
  const std::int64_t formula = config.num_hidden_layers *
                               (config.kv_lora_rank + config.qk_rope_head_dim) *
                               static_cast<std::int64_t>(size_of(shape.type));

  fmt::print(
      "model {} ({}): {} layers, hidden {}, {} routed experts top-{}, {:.1f}M parameters, "
      "random weights, FP32 on {}, {} threads\n",
      o.config, file.string(), config.num_hidden_layers, config.hidden_size,
      config.n_routed_experts, config.num_experts_per_tok,
      static_cast<double>(runner.parameters().element_count()) / 1e6, o.device, threads);
  fmt::print(
      "latent cache ({}): {:.0f} bytes per token measured ({} bytes in {} blocks of {} tokens{}); "
      "formula layers x (kv_lora_rank + rope) x {} bytes = {}\n",
      o.cache_dtype, measured_per_token, allocated, cache.total_blocks(), shape.block_tokens,
      where.is_cuda() ? ", from the GPU memory pool's statistics" : "", size_of(shape.type),
      formula);
  run_batch(model, cache, context, 1, o, 99);  // warm-up: first calls, GEMM engines, tables
  nlohmann::json results = nlohmann::json::array();
  for (const std::int64_t batch : o.batches) {
    std::vector<double> prefill, decode;
    for (int r = 0; r < o.repeat; ++r) {
      const run_times t = run_batch(model, cache, context, batch, o, static_cast<unsigned>(r));
      prefill.push_back(static_cast<double>(batch * o.prompt_tokens) / t.prefill);
      decode.push_back(static_cast<double>(batch * (o.new_tokens - 1)) / t.decode);
    }
    const double p = median_of(prefill), d = median_of(decode);
    fmt::print(
        "batch {:>3}: prefill {:>9.1f} tokens/s ({} x {} tokens; min {:.1f}, max {:.1f}), decode "
        "{:>8.1f} tokens/s ({:.2f} ms per step; min {:.1f}, max {:.1f}); medians of {}\n",
        batch, p, batch, o.prompt_tokens, *std::min_element(prefill.begin(), prefill.end()),
        *std::max_element(prefill.begin(), prefill.end()), d, 1e3 * static_cast<double>(batch) / d,
        *std::min_element(decode.begin(), decode.end()),
        *std::max_element(decode.begin(), decode.end()), o.repeat);
    results.push_back(
        {{"batch", batch}, {"prefill_tokens_per_second", p}, {"decode_tokens_per_second", d}});
  }
  if (where.is_cuda()) print_attention_bandwidth(model, cache, context, largest, o);
  if (o.json)
    fmt::print("{}\n", nlohmann::json{{"config", o.config},
                                      {"device", o.device},
                                      {"threads", threads},
                                      {"prompt_tokens", o.prompt_tokens},
                                      {"new_tokens", o.new_tokens},
                                      {"cache_bytes_per_token", measured_per_token},
                                      {"cache_bytes_per_token_formula", formula},
                                      {"results", results}}
                           .dump());
  return exit_ok;
}

}  // namespace

void add_bench_generate_command(CLI::App& bench_group, int& exit_code) {
  auto o = std::make_shared<bench_generate_options>();
  auto* command = bench_group.add_subcommand(
      "generate",
      "Prefill and decode tokens/s of continuous batching over the latent cache at several "
      "batch sizes (random weights), and the cache's bytes per token");
  command
      ->add_option("--config", o->config,
                   "tiny, small (the small-512 config) or a config.json path")
      ->capture_default_str();
  command->add_option("--batch", o->batches, "Batch sizes, comma-separated (default 1,8,32)")
      ->delimiter(',')
      ->check(within({1, 4096}));
  command->add_option("--prompt-tokens", o->prompt_tokens, "Prompt tokens per sequence")
      ->check(within({1, 1 << 20}))
      ->capture_default_str();
  command->add_option("--new-tokens", o->new_tokens, "Tokens generated per sequence")
      ->check(within({2, 1 << 20}))
      ->capture_default_str();
  command->add_option("--repeat", o->repeat, "Timed runs per batch size (medians are printed)")
      ->check(within({1, 1000}))
      ->capture_default_str();
  command->add_option("--threads", o->threads, "Worker threads (default: one per core)")
      ->check(within(thread_bounds));
  command->add_option("--device", o->device, "cpu (default) or cuda:N");
  command->add_option("--cache-dtype", o->cache_dtype, "f32 (default) or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}));
  command->add_flag("--json", o->json, "Also print one JSON object with the figures");
  command->callback([o, &exit_code] {
    try {
      exit_code = bench_generate(*o);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench generate: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
