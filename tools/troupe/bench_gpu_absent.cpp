// `troupe bench gemm`, `bench attention` and `bench experts` in a build without CUDA: the commands
// are there and say why they cannot run.
#include <fmt/format.h>

#include "runtime/device/cuda.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

double bf16_peak_tflops(int) {
  return 0.0;
}

void add_bench_gemm_command(CLI::App& bench_group, int& exit_code) {
  auto* command = bench_group.add_subcommand(
      "gemm", "TFLOP/s of the GPU GEMMs on DeepSeek-V3's shapes (needs a build with CUDA)");
  command->allow_extras();
  command->callback([&exit_code] {
    fmt::print(stderr, "troupe bench gemm: {}\n", cuda::unavailable_reason());
    exit_code = exit_bad_input;
  });
}

void add_bench_attention_command(CLI::App& bench_group, int& exit_code) {
  auto* command = bench_group.add_subcommand(
      "attention",
      "The GPU's causal flash attention, forward and backward (needs a build with CUDA)");
  command->allow_extras();
  command->callback([&exit_code] {
    fmt::print(stderr, "troupe bench attention: {}\n", cuda::unavailable_reason());
    exit_code = exit_bad_input;
  });
}

void add_bench_experts_command(CLI::App& bench_group, int& exit_code) {
  auto* command = bench_group.add_subcommand(
      "experts", "The routed experts' grouped GEMMs on the GPU (needs a build with CUDA)");
  command->allow_extras();
  command->callback([&exit_code] {
    fmt::print(stderr, "troupe bench experts: {}\n", cuda::unavailable_reason());
    exit_code = exit_bad_input;
  });
}

}  // namespace troupe::cli
