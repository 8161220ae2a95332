// `troupe bench sgemm`: the host's FP32 GEMMs on the small shapes of a training step, troupe's own
// AVX-512 kernel (kernels/cpu/small_gemm.hpp) against OpenBLAS on the same operands, one thread.
// Each repetition runs a shape over 64 sets of operands (one per routed expert of a layer), so
// the weights come from memory as they do in a step, not from a warm cache. GFLOP/s: the median
// of the repetitions, with min and max.
#include <cblas.h>

#include <chrono>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "kernels/cpu/blas.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/small_gemm.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

namespace cpu = kernels::cpu;

constexpr std::int64_t sets = 64;  // operand sets per repetition: a layer's routed experts

struct sgemm_case {
  const char* what;
  cpu::gemm_shape shape;
};

/// The small-512 config's products (hidden 512, expert intermediate 256, 96 rows per expert at
/// 2 x 512 tokens top-6 of 64; attention blocks of 128 queries against 384 keys, qk 96, v 64).
std::vector<sgemm_case> step_shapes() {
  const auto nn = [](std::int64_t m, std::int64_t n, std::int64_t k) {
    return cpu::gemm_shape{false, false, m, n, k, k, n, n};
  };
  const auto nt = [](std::int64_t m, std::int64_t n, std::int64_t k) {
    return cpu::gemm_shape{false, true, m, n, k, k, k, n};
  };
  const auto tn = [](std::int64_t m, std::int64_t n, std::int64_t k) {
    return cpu::gemm_shape{true, false, m, n, k, m, n, n};
  };
  return {{"expert gate or up, forward (x W^T)", nt(96, 256, 512)},
          {"expert down, forward", nt(96, 512, 256)},
          {"expert down, input gradient (dy W)", nn(96, 256, 512)},
          {"expert gate or up, input gradient", nn(96, 512, 256)},
          {"expert gate or up weight gradient (dy^T x)", tn(256, 512, 96)},
          {"expert down weight gradient", tn(512, 256, 96)},
          {"attention scores (Q K^T)", nt(128, 384, 96)},
          {"attention P V", nn(128, 64, 384)},
          {"attention dQ (dS K)", nn(128, 96, 384)},
          {"attention dK (dS^T Q)", tn(128, 96, 384)},
          {"q_a weight gradient (1024 tokens)", tn(128, 512, 1024)},
          {"kv_a weight gradient", tn(96, 512, 1024)},
          {"q_b weight gradient", tn(256, 128, 1024)},
          {"o_proj weight gradient", tn(512, 512, 1024)}};
}

struct rates {
  double min = 0.0, median = 0.0, max = 0.0;
};

template <class F>
rates measure(const cpu::gemm_shape& s, int repetitions, F&& product) {
  std::vector<double> seen;
  for (int r = 0; r <= repetitions; ++r) {  // the first is a warm-up
    const auto start = std::chrono::steady_clock::now();
    product();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (r > 0) seen.push_back(2.0 * static_cast<double>(s.m * s.n * s.k * sets) / seconds / 1e9);
  }
  return {*std::min_element(seen.begin(), seen.end()), median_of(seen),
          *std::max_element(seen.begin(), seen.end())};
}

}  // namespace

void add_bench_sgemm_command(CLI::App& bench_group, int& exit_code) {
  auto* command = bench_group.add_subcommand(
      "sgemm",
      "The host's FP32 GEMMs on a training step's small shapes (routed experts, attention "
      "blocks): troupe's own AVX-512 kernel against OpenBLAS, one thread, GFLOP/s");
  static int repetitions = 9;
  command->add_option("--repetitions", repetitions, "Timed repetitions per shape (default 9)")
      ->check(CLI::Range(1, 1000));
  command->callback([&exit_code] {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    const cpu::blas_library& blas = cpu::blas();
    fmt::print("one thread; each repetition: 64 sets of operands; GFLOP/s median (min-max) of {}\n",
               repetitions);
    bool any_own = false;
    for (const sgemm_case& c : step_shapes()) {
      const cpu::gemm_shape& s = c.shape;
      const std::int64_t a_size = s.m * s.k, b_size = s.n * s.k, c_size = s.m * s.n;
      std::vector<float> a(static_cast<std::size_t>(a_size * sets)),
          b(static_cast<std::size_t>(b_size * sets)), out(static_cast<std::size_t>(c_size * sets));
      for (auto* v : {&a, &b})
        for (float& x : *v) x = normal(rng);
      const rates reference = measure(s, repetitions, [&] {
        for (std::int64_t e = 0; e < sets; ++e)
          blas.sgemm(CblasRowMajor, s.transpose_a ? CblasTrans : CblasNoTrans,
                     s.transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(s.m),
                     static_cast<int>(s.n), static_cast<int>(s.k), 1.0f, a.data() + e * a_size,
                     static_cast<int>(s.lda), b.data() + e * b_size, static_cast<int>(s.ldb), 0.0f,
                     out.data() + e * c_size, static_cast<int>(s.ldc));
      });
      const bool own = cpu::small_sgemm_fits(s);
      any_own = any_own || own;
      fmt::print("{:<40} {:>4}x{:<4}x{:<4}  OpenBLAS {:6.1f} ({:.1f}-{:.1f})", c.what, s.m, s.n,
                 s.k, reference.median, reference.min, reference.max);
      if (!own) {
        fmt::print("  troupe: OpenBLAS's (this shape stays with it)\n");
        continue;
      }
      const rates mine = measure(s, repetitions, [&] {
        for (std::int64_t e = 0; e < sets; ++e)
          cpu::small_sgemm(s, 1.0f, a.data() + e * a_size, b.data() + e * b_size, 0.0f,
                           out.data() + e * c_size);
      });
      fmt::print("  troupe {:6.1f} ({:.1f}-{:.1f})  ratio {:.2f}\n", mine.median, mine.min,
                 mine.max, mine.median / reference.median);
    }
    if (!any_own) fmt::print("this CPU has no AVX-512: every shape goes to OpenBLAS\n");
    exit_code = 0;
  });
}

}  // namespace troupe::cli
