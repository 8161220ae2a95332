// troupe bench dispatch: expert parallelism's all-to-all between the GPUs of this machine over
// NCCL (runtime/experts/nccl_expert_exchange.hpp), one process per GPU as in a job: the counts
// exchange, the FP8 dispatch and the BF16 combine of DeepSeek-V3's shapes (4096 tokens per GPU,
// top-8 of 256 experts, hidden 7168), each timed end to end (casts, reordering and NCCL) until its
// output is ready, with the bytes each GPU puts on the wire per second.
// tools/reference/bench_all_to_all_torch.py moves the same bytes with torch.distributed's
// all_to_all_single on the same GPUs.

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/experts/nccl_expert_exchange.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/pipe_io.hpp"

namespace troupe::cli {

namespace {

struct dispatch_bench_options {
  int gpus = 1;
  int tokens = 4096;
  int hidden = 7168;
  int topk = 8;
  int experts = 256;
  int iterations = 20;
};

/// One rank's medians.
struct rank_figures {
  double plan_ms = 0, dispatch_ms = 0, combine_ms = 0;
  double kept_ms = 0;       ///< dispatch keeping the FP8 codes (no decode)
  double combine16_ms = 0;  ///< combine of BF16 expert outputs (no cast)
  /// What the rank sends to other GPUs (one GPU: to itself).
  std::int64_t dispatch_bytes = 0, combine_bytes = 0;
};

/// Rank `rank`: joins the group (rank 0 makes the id and hands it to the launcher through
/// `id_out`; the others read it from `id_in`), then times the three steps.
rank_figures run_rank(const dispatch_bench_options& o, int rank, int id_in, int id_out) {
  cuda::require_device(rank);
  cuda::use_device(rank);
  std::vector<std::uint8_t> id(128);
  if (rank == 0) {
    id = nccl_communicator::make_id();
    write_all(id_out, id.data(), id.size(), "bench dispatch");
  } else {
    read_all(id_in, id.data(), id.size(), "bench dispatch");
  }
  nccl_communicator comm(id, o.gpus, rank, rank, std::chrono::seconds(60));
  // Experts split evenly and contiguously (experts / gpus a rank), each token's top-k spread
  // evenly over them: every expert gets tokens * topk / experts rows from every rank.
  std::vector<std::vector<std::int64_t>> placed(static_cast<std::size_t>(o.gpus));
  for (std::int64_t e = 0; e < o.experts; ++e)
    placed[static_cast<std::size_t>(e * o.gpus / o.experts)].push_back(e);
  nccl_expert_exchange ep(comm, rank, expert_rank_layout(placed, o.experts));
  const std::int64_t rows = std::int64_t{o.tokens} * o.topk;
  std::vector<std::int64_t> counts(static_cast<std::size_t>(o.experts), rows / o.experts);
  for (std::int64_t e = 0; e < rows % o.experts; ++e) ++counts[static_cast<std::size_t>(e)];
  tensor host = tensor::empty(dtype::f32, {rows, o.hidden});
  std::uint32_t state = 2463534242u + static_cast<std::uint32_t>(rank);
  for (std::int64_t i = 0; i < host.numel(); ++i) {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    host.data_as<float>()[i] = static_cast<float>(static_cast<std::int32_t>(state)) * 1e-9f;
  }
  const tensor x = host.to(device::cuda(rank));
  const tensor expert_outputs = convert(x, dtype::bf16);  // what BF16 expert GEMMs give back
  std::vector<double> plan_ms, dispatch_ms, combine_ms, kept_ms, combine16_ms;
  using clock = std::chrono::steady_clock;
  // NOTES: a call returns when its rows have crossed; its last cast (the decode) may still run.
  // Each step is timed until the GPU is done with it, so none is billed to the next.
  auto ms_since = [rank](clock::time_point t) {
    cuda::synchronize(rank);
    return std::chrono::duration<double, std::milli>(clock::now() - t).count();
  };
  for (int i = -3; i < o.iterations; ++i) {  // three warm-ups
    auto t = clock::now();
    const auto plan = ep.plan(counts);
    const double p = ms_since(t);
    t = clock::now();
    const tensor expert_rows = ep.dispatch(plan, x, wire_precision::fp8);
    const double d = ms_since(t);
    t = clock::now();
    const tensor back = ep.combine(plan, expert_rows, wire_precision::bf16);
    const double c = ms_since(t);
    t = clock::now();
    const encoded_rows kept = ep.dispatch_encoded(plan, x, wire_precision::fp8);
    const double k = ms_since(t);
    t = clock::now();
    const tensor back16 = ep.combine(plan, expert_outputs, wire_precision::bf16);
    const double c16 = ms_since(t);
    if (i < 0) continue;
    plan_ms.push_back(p);
    dispatch_ms.push_back(d);
    combine_ms.push_back(c);
    kept_ms.push_back(k);
    combine16_ms.push_back(c16);
  }
  // The rows that cross to other GPUs (on one GPU: to itself, all there is).
  std::int64_t crossing = 0;
  for (std::int64_t e = 0; e < o.experts; ++e)
    if (o.gpus == 1 || e * o.gpus / o.experts != rank)
      crossing += counts[static_cast<std::size_t>(e)];
  const std::int64_t tiles = (o.hidden + 127) / 128;
  return {median_of(plan_ms),     median_of(dispatch_ms),  median_of(combine_ms),
          median_of(kept_ms),     median_of(combine16_ms), crossing * (o.hidden + 4 * tiles),
          crossing * o.hidden * 2};
}

int bench_dispatch(const dispatch_bench_options& o) {
  if (o.experts % o.gpus != 0)
    fail("bench dispatch: {} experts do not split evenly over {} GPUs", o.experts, o.gpus);
  // NOTES: the launcher never touches CUDA: a process that initialised CUDA cannot hand it to a
  // forked child. Rank 0 makes the NCCL id and the launcher passes it on through pipes.
  int results[2], from_zero[2];
  if (::pipe(results) != 0 || ::pipe(from_zero) != 0) fail("bench dispatch: pipe failed");
  std::vector<std::array<int, 2>> to_rank(static_cast<std::size_t>(o.gpus));
  for (auto& p : to_rank)
    if (::pipe(p.data()) != 0) fail("bench dispatch: pipe failed");
  std::vector<pid_t> children;
  for (int rank = 0; rank < o.gpus; ++rank) {
    const pid_t child = fork();
    if (child < 0) fail("bench dispatch: fork failed");
    if (child == 0) {
      // Only this rank's ends stay open: a rank that fails closes them by exiting, and whoever
      // reads from it sees the end of the pipe instead of waiting for ever.
      ::close(results[0]);
      ::close(from_zero[0]);
      if (rank != 0) ::close(from_zero[1]);
      for (int other = 0; other < o.gpus; ++other) {
        ::close(to_rank[static_cast<std::size_t>(other)][1]);
        if (other != rank) ::close(to_rank[static_cast<std::size_t>(other)][0]);
      }
      std::string line;
      try {
        const auto f = run_rank(o, rank, to_rank[static_cast<std::size_t>(rank)][0], from_zero[1]);
        line =
            fmt::format("{} {} {} {} {} {} {} {}\n", rank, f.plan_ms, f.dispatch_ms, f.combine_ms,
                        f.kept_ms, f.combine16_ms, f.dispatch_bytes, f.combine_bytes);
      } catch (const std::exception& e) {
        line = fmt::format("{} error {}\n", rank, e.what());
      }
      write_all(results[1], line.data(), line.size(), "bench dispatch");
      std::_Exit(0);
    }
    children.push_back(child);
  }
  ::close(results[1]);
  ::close(from_zero[1]);
  for (const auto& p : to_rank) ::close(p[0]);
  std::vector<std::uint8_t> id(128);
  bool have_id = true;
  try {
    read_all(from_zero[0], id.data(), id.size(), "bench dispatch");
  } catch (const std::exception&) {
    have_id = false;
  }
  // NOTES: a rank that failed has closed its pipe; writing to it must not kill the launcher
  // (SIGPIPE) before it has said which rank failed and why.
  const auto previous = std::signal(SIGPIPE, SIG_IGN);
  for (int rank = 1; rank < o.gpus; ++rank) {
    const int to = to_rank[static_cast<std::size_t>(rank)][1];
    if (have_id) (void)::write(to, id.data(), id.size());  // a short write: the rank reports it
    ::close(to);
  }
  std::signal(SIGPIPE, previous);
  std::string text;
  char buffer[4096];
  bool stopped = false;
  for (ssize_t n; (n = ::read(results[0], buffer, sizeof buffer)) > 0;) {
    text.append(buffer, static_cast<std::size_t>(n));
    // A rank that failed leaves the others waiting in a collective until NCCL's deadline: they
    // are stopped at once, and the failure reported.
    if (!stopped && text.find(" error ") != std::string::npos) {
      for (pid_t child : children) ::kill(child, SIGTERM);
      stopped = true;
    }
  }
  for (pid_t child : children) waitpid(child, nullptr, 0);

  std::vector<rank_figures> figures;
  std::istringstream lines(text);
  std::string errors;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    int rank = 0;
    std::string first;
    fields >> rank >> first;
    if (first == "error") {
      errors += fmt::format("rank {}:{}\n", rank, line.substr(line.find("error") + 5));
      continue;
    }
    rank_figures f;
    f.plan_ms = std::stod(first);
    fields >> f.dispatch_ms >> f.combine_ms >> f.kept_ms >> f.combine16_ms >> f.dispatch_bytes >>
        f.combine_bytes;
    figures.push_back(f);
  }
  if (!errors.empty() || static_cast<int>(figures.size()) != o.gpus)
    fail("{} of {} ranks finished{}\n{}", figures.size(), o.gpus,
         stopped ? " (one failed; the others were stopped)" : "", errors);
  // A collective is as slow as its slowest rank.
  auto slowest = [&](double rank_figures::*field) {
    double worst = 0;
    for (const auto& f : figures) worst = std::max(worst, f.*field);
    return worst;
  };
  const double plan = slowest(&rank_figures::plan_ms);
  const double dispatch = slowest(&rank_figures::dispatch_ms);
  const double combine = slowest(&rank_figures::combine_ms);
  fmt::print(
      "troupe bench dispatch: {} GPU{}, one process each; per GPU {} tokens x top-{} = {} rows, "
      "hidden {}, {} experts (balanced); medians of {} iterations, the slowest rank's\n",
      o.gpus, o.gpus == 1 ? "" : "s", o.tokens, o.topk, std::int64_t{o.tokens} * o.topk, o.hidden,
      o.experts, o.iterations);
  fmt::print("{:<34} {:>10} {:>14} {:>18}\n", "step", "median ms", "MB to others", "GB/s per GPU");
  fmt::print("{:<34} {:>10.3f} {:>14} {:>18}\n", "counts exchange", plan, "-", "-");
  const auto& f0 = figures.front();
  auto row = [](const char* step, double ms, std::int64_t bytes) {
    fmt::print("{:<34} {:>10.3f} {:>14.1f} {:>18.1f}\n", step, ms, bytes / 1e6, bytes / (ms * 1e6));
  };
  row("dispatch, fp8 1x128, f32 in and out", dispatch, f0.dispatch_bytes);
  row("dispatch, fp8 codes kept", slowest(&rank_figures::kept_ms), f0.dispatch_bytes);
  row("combine, bf16, f32 in and out", combine, f0.combine_bytes);
  row("combine, bf16 in, f32 out", slowest(&rank_figures::combine16_ms), f0.combine_bytes);
  if (o.gpus == 1)
    fmt::print(
        "(one GPU: every row goes to itself, through NCCL's copy of a rank to itself; the figures "
        "measure the casts, the reordering and the calls, not NVLink)\n");
  return exit_ok;
}

}  // namespace

void add_bench_dispatch_command(CLI::App& bench_group, int& exit_code) {
  auto options = std::make_shared<dispatch_bench_options>();
  auto* command = bench_group.add_subcommand(
      "dispatch",
      "Expert parallelism's FP8 dispatch and BF16 combine between this machine's GPUs over NCCL");
  command->add_option("--gpus", options->gpus, "GPUs (one process each: cuda:0 to cuda:N-1)")
      ->check(within({1, 64}))
      ->capture_default_str();
  command->add_option("--tokens", options->tokens, "Tokens per GPU")
      ->check(within({1, 1 << 18}))
      ->capture_default_str();
  command->add_option("--hidden", options->hidden, "Hidden size")
      ->check(within({1, 1 << 16}))
      ->capture_default_str();
  command->add_option("--topk", options->topk, "Routed experts per token")
      ->check(within({1, 64}))
      ->capture_default_str();
  command->add_option("--experts", options->experts, "Routed experts")
      ->check(within({1, 1 << 16}))
      ->capture_default_str();
  command->add_option("--iterations", options->iterations, "Timed iterations")
      ->check(within({1, 100000}))
      ->capture_default_str();
  command->callback([options, &exit_code] {
    try {
      exit_code = bench_dispatch(*options);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench dispatch: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
