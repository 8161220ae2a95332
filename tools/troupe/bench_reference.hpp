#pragma once

// The reference every CPU throughput figure of `troupe bench` is a ratio to.

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "runtime/core/install_layout.hpp"
#include "runtime/exec/thread_pool.hpp"

namespace troupe::cli {

/// The config.json `troupe bench model` and `bench generate` name by `name`: tiny, small (the
/// small-512 config) or a path.
inline std::filesystem::path bench_model_config(const std::string& name) {
  const std::filesystem::path models = current_install_layout().topology_dir / "models";
  if (name == "tiny") return models / "tiny" / "config.json";
  if (name == "small") return models / "small-512" / "config.json";
  return name;
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
inline double median_of(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

/// sgemm on the worker pool, GFLOP/s: 1024^3 and 2048^3, 8 timed runs each after a warm-up
/// (a short run swings with the cores' state; the spread says how much).
struct sgemm_reference {
  double best = 0.0, median = 0.0, worst = 0.0;
  /// Folds in another measurement (before and after a benchmark).
  void merge(const sgemm_reference& other);
};
sgemm_reference measure_sgemm(thread_pool& pool);

/// The best of measure_sgemm: the reference `troupe bench` figures are ratios to.
double sgemm_gflops(thread_pool& pool);

/// The GPU's reference: a BF16 cuBLASLt GEMM of 8192^3 (BF16 in and out, FP32 accumulation) on
/// cuda:`ordinal`, TFLOP/s (median of 20 after 5 warm-up runs). 0 in a build without CUDA.
double bf16_peak_tflops(int ordinal);

}  // namespace troupe::cli
