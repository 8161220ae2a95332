#pragma once

// Each subcommand of `troupe` adds itself to the CLI11 app and returns the exit code its callback
// will set. One file per subcommand.

#include <CLI/CLI.hpp>

#include "runtime/core/input_limits.hpp"

namespace troupe::cli {

/// Exit codes: 0 success, 1 bad input or a failure (a topology, a plugin, an argument, an
/// actor's error), 2 not available, 3 training stopped by a signal (after checkpointing), 4
/// training stopped by a non-finite loss or gradient, 5 a process of a multi-process job failed
/// (died, stopped answering, or never arrived at the rendezvous).
inline constexpr int exit_ok = 0;
inline constexpr int exit_bad_input = 1;
inline constexpr int exit_unavailable = 2;
inline constexpr int exit_stopped = 3;
inline constexpr int exit_non_finite = 4;
inline constexpr int exit_process_failed = 5;

/// A CLI11 check that an integer option lies within `bounds` (the same bounds type the topology
/// and JSON readers use; CLI11 itself refuses values that do not fit the option's type).
inline CLI::Validator within(integer_bounds bounds) {
  return CLI::Range(bounds.min, bounds.max);
}

/// The most worker threads a command starts: far above any core count troupe runs on, below
/// where creating them fails.
inline constexpr integer_bounds thread_bounds{1, 256};

void add_version_command(CLI::App& app, int& exit_code);
void add_plugins_command(CLI::App& app, int& exit_code);
void add_topo_command(CLI::App& app, int& exit_code);
void add_train_command(CLI::App& app, int& exit_code);
void add_launch_command(CLI::App& app, int& exit_code);
void add_logits_command(CLI::App& app, int& exit_code);
void add_tokenize_command(CLI::App& app, int& exit_code);
void add_generate_command(CLI::App& app, int& exit_code);
/// `troupe serve`: the OpenAI-compatible HTTP server.
void add_serve_command(CLI::App& app, int& exit_code);
/// `troupe eplb`: DeepSeek's expert-parallel load balancer on a file of expert loads.
void add_eplb_command(CLI::App& app, int& exit_code);
void add_bench_command(CLI::App& app, int& exit_code);
void add_bench_gemm_command(CLI::App& bench_group, int& exit_code);
void add_bench_attention_command(CLI::App& bench_group, int& exit_code);
void add_bench_experts_command(CLI::App& bench_group, int& exit_code);
/// `troupe bench sgemm`: the host's own small-GEMM kernel against OpenBLAS.
void add_bench_sgemm_command(CLI::App& bench_group, int& exit_code);
void add_schedule_command(CLI::App& app, int& exit_code);
void add_plot_command(CLI::App& app, int& exit_code);
void add_ctl_command(CLI::App& app, int& exit_code);
/// `troupe bench train`, under the bench group.
void add_bench_train_command(CLI::App& bench_group, int& exit_code);
/// `troupe bench transport`, under the bench group.
void add_bench_transport_command(CLI::App& bench_group, int& exit_code);
/// `troupe bench dispatch`: expert parallelism's all-to-all between GPUs over NCCL.
void add_bench_dispatch_command(CLI::App& bench_group, int& exit_code);
/// `troupe bench generate`, under the bench group.
void add_bench_generate_command(CLI::App& bench_group, int& exit_code);

}  // namespace troupe::cli
