// `troupe bench gemm`: TFLOP/s of the GPU GEMMs a linear layer runs, on DeepSeek-V3's shapes:
// cuBLASLt BF16 (FP32 accumulation, BF16 out), cuBLASLt block-scaled FP8 (1x128 activation tiles,
// 128x128 weight blocks, BF16 out) alone, and the same with the activation's cast on the GPU in
// front of it (the weight is cast once, as a training step does). Medians of CUDA-event timings.
// tools/reference/bench_gemm_torch.py measures PyTorch on the same shapes for the ratio.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kernels/cuda/cublaslt_gemm.hpp"
#include "kernels/cuda/fp8_gemm.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/tensor/tensor.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/gpu_timing.hpp"

namespace troupe::cli {

namespace {

namespace kc = kernels::cuda;

struct gemm_bench_options {
  std::string device = "cuda:0";
  int iterations = 30;
  std::string json;
  bool quick = false;
};

struct shape {
  std::int64_t m, n, k;
};

std::vector<shape> bench_shapes(bool quick) {
  // DeepSeek-V3's linear layers ((n, k) as the report's GEMM benchmarks list them) at m = 128
  // (decode, small micro-batches) and m = 4096 (training, prefill), and 8192^3.
  const std::pair<std::int64_t, std::int64_t> nk[] = {{2112, 7168},  {24576, 1536}, {32768, 512},
                                                      {7168, 16384}, {4096, 7168},  {7168, 2048}};
  std::vector<shape> shapes;
  for (std::int64_t m : {std::int64_t{128}, std::int64_t{4096}})
    for (const auto& [n, k] : nk) shapes.push_back({m, n, k});
  shapes.push_back({8192, 8192, 8192});
  if (quick) shapes = {{4096, 7168, 2048}};
  return shapes;
}

/// Random normal values as a bf16 tensor on `where`.
tensor random_bf16(std::int64_t rows, std::int64_t cols, std::uint32_t seed, device where) {
  tensor host = tensor::empty(dtype::f32, {rows, cols});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  float* p = host.data_as<float>();
  for (std::int64_t i = 0; i < rows * cols; ++i) p[i] = normal(rng);
  return convert(host, dtype::bf16).to(where);
}

kc::gemm_matrix matrix(const tensor& t) {
  return {t.data(), t.type() == dtype::bf16 ? kc::gemm_dtype::bf16 : kc::gemm_dtype::f32, t.size(0),
          t.size(1), t.size(1)};
}

}  // namespace

double bf16_peak_tflops(int ordinal) {
  cuda::require_device(ordinal);
  cuda::stream stream(ordinal);
  cuda::stream_guard guard(stream);
  kc::cublaslt_gemm engine(ordinal, stream.native());
  constexpr std::int64_t size = 8192;
  const device where = device::cuda(ordinal);
  const tensor x = random_bf16(size, size, 1, where), w = random_bf16(size, size, 2, where);
  tensor y = tensor::empty(dtype::bf16, {size, size}, where);
  const double ms = median_ms(
      stream, 20, [&] { engine.gemm(matrix(x), false, matrix(w), true, matrix(y), 1.0f, 0.0f); });
  return 2.0 * static_cast<double>(size * size) * static_cast<double>(size) / (ms * 1e-3) / 1e12;
}

namespace {

int bench_gemm(const gemm_bench_options& options) {
  const device where = parse_device(options.device);
  if (!where.is_cuda())
    fail("--device {}: troupe bench gemm measures the GPU GEMMs; give cuda:N", options.device);
  cuda::require_device(where.index);
  const int ordinal = where.index;
  cuda::stream stream(ordinal);
  cuda::stream_guard guard(stream);
  kc::cublaslt_gemm bf16(ordinal, stream.native());
  kc::fp8_gemm_engine fp8(ordinal, stream.native());
  const auto gpus = cuda::visible_gpus();
  const std::string gpu_name =
      static_cast<std::size_t>(ordinal) < gpus.size() ? gpus[ordinal].name : "?";
  fmt::print("troupe bench gemm on {} ({}), median of {} timed runs each\n", options.device,
             gpu_name, options.iterations);
  fmt::print("{:>5} {:>6} {:>6}  {:>10} {:>10} {:>14} {:>10} {:>10}\n", "m", "n", "k", "bf16 TF/s",
             "fp8 TF/s", "fp8+cast TF/s", "cast us", "cast GB/s");
  nlohmann::json results = nlohmann::json::array();
  for (const auto& s : bench_shapes(options.quick)) {
    tensor x = random_bf16(s.m, s.k, 1, where), w = random_bf16(s.n, s.k, 2, where);
    tensor y = tensor::empty(dtype::bf16, {s.m, s.n}, where);
    const double flops =
        2.0 * static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k);
    const double bf16_ms = median_ms(stream, options.iterations, [&] {
      bf16.gemm(matrix(x), false, matrix(w), true, matrix(y), 1.0f, 0.0f);
    });
    const kc::dense_operand activation{matrix(x), false, false}, weight{matrix(w), true, true};
    fp8.quantize(activation, weight);
    const double fp8_ms =
        median_ms(stream, options.iterations, [&] { fp8.multiply(matrix(y), 1.0f, 0.0f); });
    const double cast_only_ms =
        median_ms(stream, options.iterations, [&] { fp8.quantize_left(activation); });
    const double cast_ms = median_ms(stream, options.iterations, [&] {
      fp8.quantize_left(activation);
      fp8.multiply(matrix(y), 1.0f, 0.0f);
    });
    const auto tflops = [&](double ms) { return flops / (ms * 1e-3) / 1e12; };
    // The cast reads x (bf16) and writes its codes and one scale per 128 values.
    const double cast_bytes = static_cast<double>(s.m * s.k) * (2.0 + 1.0 + 4.0 / 128.0);
    fmt::print("{:>5} {:>6} {:>6}  {:>10.1f} {:>10.1f} {:>14.1f} {:>10.1f} {:>10.0f}\n", s.m, s.n,
               s.k, tflops(bf16_ms), tflops(fp8_ms), tflops(cast_ms), cast_only_ms * 1e3,
               cast_bytes / (cast_only_ms * 1e-3) / 1e9);
    std::fflush(stdout);
    results.push_back({{"m", s.m},
                       {"n", s.n},
                       {"k", s.k},
                       {"bf16_ms", bf16_ms},
                       {"fp8_ms", fp8_ms},
                       {"fp8_with_cast_ms", cast_ms},
                       {"cast_ms", cast_only_ms},
                       {"bf16_tflops", tflops(bf16_ms)},
                       {"fp8_tflops", tflops(fp8_ms)},
                       {"fp8_with_cast_tflops", tflops(cast_ms)}});
  }
  if (!options.json.empty()) {
    std::ofstream out(options.json);
    out << nlohmann::json{{"device", options.device}, {"gpu", gpu_name}, {"results", results}}.dump(
               2)
        << "\n";
    if (!out) fail("cannot write {}", options.json);
  }
  return exit_ok;
}

}  // namespace

void add_bench_gemm_command(CLI::App& bench_group, int& exit_code) {
  auto options = std::make_shared<gemm_bench_options>();
  auto* command = bench_group.add_subcommand(
      "gemm",
      "TFLOP/s of the GPU GEMMs on DeepSeek-V3's shapes: cuBLASLt BF16, block-scaled FP8, and FP8 "
      "with the activation cast (compare: tools/reference/bench_gemm_torch.py)");
  command->add_option("--device", options->device, "The GPU (cuda:N)")->capture_default_str();
  command
      ->add_option("--iterations", options->iterations, "Timed runs per GEMM (the median counts)")
      ->check(within({1, 10000}))
      ->capture_default_str();
  command->add_option("--json", options->json, "Also write the figures to this file");
  command->add_flag("--quick", options->quick, "One shape only (a smoke test)");
  command->callback([options, &exit_code] {
    try {
      exit_code = bench_gemm(*options);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench gemm: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
