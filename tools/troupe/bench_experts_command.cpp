// `troupe bench experts`: the routed experts' grouped GEMMs of one MoE layer on the GPU, at a model
// config's shapes (tokens x top-k rows routed uniformly at random over the experts): Fprop, Dgrad
// and Wgrad of gate+up (two weight tables stacked) and of down, as a training step runs them under
// the BF16 math: the activations BF16 in and out (the gathered input rounded once beforehand, as
// the moe plugin does in forward; the weights' BF16 copy made once beforehand, as the optimizer
// keeps it), the weight gradients FP32, for each tensor-core kernel (mma.sync, Hopper's wgmma,
// CUTLASS's grouped GEMM). The reference in the same run: cuBLASLt BF16 on one dense
// GEMM of the same rows and shapes, as if a single expert held every row. Medians of CUDA-event
// timings. tools/reference/bench_experts_torch.py measures PyTorch's grouped_mm on the same shapes.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kernels/cuda/cublaslt_gemm.hpp"
#include "kernels/cuda/grouped_gemm.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/tensor/tensor.hpp"
#include "tools/troupe/bench_reference.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/gpu_timing.hpp"

namespace troupe::cli {

namespace {

namespace kc = kernels::cuda;

struct experts_bench_options {
  std::string device = "cuda:0";
  std::string config;  // empty: the GPU small config
  std::int64_t tokens = 4096;
  int iterations = 20;
  std::string json;
  std::vector<std::string> kernels;  // empty: every kernel this build and GPU run
};

/// Expert offsets and the row order of `tokens` tokens each routed to `top_k` distinct experts
/// drawn uniformly: row r (sorted by expert) reads token order[r] / top_k.
struct routing {
  std::vector<std::int64_t> offsets, order;
};

routing random_routing(std::int64_t tokens, std::int64_t experts, std::int64_t top_k) {
  std::mt19937 rng(11);
  std::vector<std::vector<std::int64_t>> rows_of(static_cast<std::size_t>(experts));
  std::vector<std::int64_t> pick(static_cast<std::size_t>(experts));
  std::iota(pick.begin(), pick.end(), 0);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t j = 0; j < top_k; ++j) {  // a partial Fisher-Yates shuffle
      std::uniform_int_distribution<std::int64_t> draw(j, experts - 1);
      std::swap(pick[static_cast<std::size_t>(j)], pick[static_cast<std::size_t>(draw(rng))]);
      rows_of[static_cast<std::size_t>(pick[static_cast<std::size_t>(j)])].push_back(t * top_k + j);
    }
  }
  routing r;
  r.offsets.push_back(0);
  for (const auto& rows : rows_of) {
    r.order.insert(r.order.end(), rows.begin(), rows.end());
    r.offsets.push_back(static_cast<std::int64_t>(r.order.size()));
  }
  return r;
}

/// `values` as an i64 tensor on `where`.
tensor indices_on(const std::vector<std::int64_t>& values, device where) {
  tensor host = tensor::empty(dtype::i64, {static_cast<std::int64_t>(values.size())});
  std::copy(values.begin(), values.end(), host.data_as<std::int64_t>());
  return host.to(where);
}

/// A device table of pointers to `count` matrices of `elements` floats each inside `storage`.
tensor pointer_table(const tensor& storage, std::int64_t count, std::int64_t elements,
                     device where) {
  tensor host = tensor::empty(dtype::i64, {count});
  auto* p = host.data_as<std::int64_t>();
  for (std::int64_t g = 0; g < count; ++g)
    p[g] = reinterpret_cast<std::int64_t>(storage.data_as<float>() + g * elements);
  return host.to(where);
}

const char* kernels_name(kc::grouped_gemm_kernels k) {
  switch (k) {
    case kc::grouped_gemm_kernels::wgmma:
      return "wgmma";
    case kc::grouped_gemm_kernels::cutlass:
      return "cutlass";
    default:
      return "mma.sync";
  }
}

int bench_experts(const experts_bench_options& o) {
  const device where = parse_device(o.device);
  if (!where.is_cuda())
    fail("--device {}: troupe bench experts measures the GPU's grouped GEMMs; give cuda:N",
         o.device);
  const model_config config = load_model_config(
      o.config.empty() ? current_install_layout().topology_dir / "models" / "small" / "config.json"
                       : bench_model_config(o.config));
  cuda::require_device(where.index);  // after the config: its errors need no GPU
  const std::int64_t experts = config.n_routed_experts, top_k = config.num_experts_per_tok;
  const std::int64_t hidden = config.hidden_size, inter = config.moe_intermediate_size;
  const std::int64_t rows = o.tokens * top_k;
  const routing route = random_routing(o.tokens, experts, top_k);

  cuda::stream stream(where.index);
  cuda::stream_guard guard(stream);
  const tensor offsets = indices_on(route.offsets, where), order = indices_on(route.order, where);
  const kc::grouped_rows gathered{offsets.data_as<std::int64_t>(), experts, rows,
                                  order.data_as<std::int64_t>(), top_k};
  const kc::grouped_rows direct{offsets.data_as<std::int64_t>(), experts, rows, nullptr, 1};
  // Inputs and weights (f32, as the model keeps them), outputs and weight gradients.
  const tensor x = random_f32(o.tokens * hidden, 1, where);
  const tensor gate = random_f32(experts * inter * hidden, 2, where);
  const tensor up = random_f32(experts * inter * hidden, 3, where);
  const tensor down = random_f32(experts * hidden * inter, 4, where);
  const tensor d_gate_up = random_f32(rows * 2 * inter, 5, where);
  const tensor h = random_f32(rows * inter, 6, where);
  const tensor dy = random_f32(rows * hidden, 7, where);
  // The activations in BF16, as their producers round them in training.
  const auto bf16_of = [&](const tensor& t) {
    return convert(t.to(device::cpu()), dtype::bf16).to(where);
  };
  const auto bf16_empty = [&](std::int64_t count) {
    return tensor::empty(dtype::bf16, {count}, where);
  };
  tensor x16 = bf16_empty(rows * hidden);
  kc::gather_rows_bf16(gathered, x.data_as<float>(), hidden, hidden, x16.data(), stream.native());
  const tensor d_gate_up16 = bf16_of(d_gate_up), h16 = bf16_of(h), dy16 = bf16_of(dy);
  tensor gate_up = bf16_empty(rows * 2 * inter), dh = bf16_empty(rows * inter);
  tensor dx = bf16_empty(rows * hidden), y = bf16_empty(rows * hidden);
  tensor grads = tensor::empty(dtype::f32, {3 * experts * inter * hidden}, where);
  const tensor gate_table = pointer_table(gate, experts, inter * hidden, where);
  const tensor up_table = pointer_table(up, experts, inter * hidden, where);
  const tensor down_table = pointer_table(down, experts, hidden * inter, where);
  const tensor grad_tables = pointer_table(grads, 3 * experts, inter * hidden, where);
  const auto weights = [](const tensor& t) {
    return reinterpret_cast<const float* const*>(t.data_as<std::int64_t>());
  };
  auto* const* d_tables = reinterpret_cast<float* const*>(grad_tables.data_as<std::int64_t>());
  const std::size_t staging_bytes =
      std::max(kc::grouped_gemm_staging_bytes(gathered, 2 * inter, hidden, kc::gemm_math::bf16),
               kc::grouped_gemm_staging_bytes(gathered, hidden, inter, kc::gemm_math::bf16));
  tensor staging = tensor::empty(dtype::u8, {static_cast<std::int64_t>(staging_bytes)}, where);
  void* s = stream.native();
  const auto math = kc::gemm_math::bf16;
  // The weights rounded to BF16 once, as the moe plugin keeps them between optimizer steps.
  const auto rounded_bytes = [](std::int64_t groups, std::int64_t n, std::int64_t k) {
    return static_cast<std::int64_t>(kc::rounded_expert_weights_bytes(groups, n, k));
  };
  tensor rounded_gate_up =
      tensor::empty(dtype::u8, {rounded_bytes(experts, 2 * inter, hidden)}, where);
  tensor rounded_down = tensor::empty(dtype::u8, {rounded_bytes(experts, hidden, inter)}, where);
  const double rounding_ms = median_ms(stream, o.iterations, [&] {
    kc::round_expert_weights({weights(gate_table), weights(up_table)}, experts, 2 * inter, hidden,
                             rounded_gate_up.data(), s);
    kc::round_expert_weights(weights(down_table), experts, hidden, inter, rounded_down.data(), s);
  });
  // A Wgrad "onto zeros" is a step's first backward (ABI 1.4's gradient_generation): blocks that
  // are their tile's only writer store. Timed repeatedly the gradients are no longer zeros, which
  // changes no timing: the kernel stores or adds by the expert's row count alone.
  struct pass_case {
    const char* name;
    std::int64_t n, k;
    std::function<void()> run;
    bool in_layer = true;  ///< counted in "one layer" (the onto-zeros rows are alternatives)
  };
  const std::vector<pass_case> passes{
      {"gate+up fprop", 2 * inter, hidden,
       [&] {
         kc::grouped_gemm_fprop(direct, nullptr, hidden,
                                {weights(gate_table), weights(up_table), rounded_gate_up.data()},
                                2 * inter, hidden, nullptr, 2 * inter, false, math, s,
                                staging.data(), x16.data(), gate_up.data());
       }},
      {"gate+up dgrad", 2 * inter, hidden,
       [&] {
         kc::grouped_gemm_dgrad(direct, nullptr, 2 * inter,
                                {weights(gate_table), weights(up_table), rounded_gate_up.data()},
                                2 * inter, hidden, nullptr, hidden, false, math, s, staging.data(),
                                d_gate_up16.data(), dx.data());
       }},
      {"gate+up wgrad", 2 * inter, hidden,
       [&] {
         kc::grouped_gemm_wgrad(direct, nullptr, 2 * inter, nullptr, hidden,
                                {d_tables, d_tables + experts}, 2 * inter, hidden, math, s,
                                staging.data(), false, d_gate_up16.data(), x16.data());
       }},
      {"down fprop", hidden, inter,
       [&] {
         kc::grouped_gemm_fprop(
             direct, nullptr, inter, {weights(down_table), nullptr, rounded_down.data()}, hidden,
             inter, nullptr, hidden, false, math, s, staging.data(), h16.data(), y.data());
       }},
      {"down dgrad", hidden, inter,
       [&] {
         kc::grouped_gemm_dgrad(
             direct, nullptr, hidden, {weights(down_table), nullptr, rounded_down.data()}, hidden,
             inter, nullptr, inter, false, math, s, staging.data(), dy16.data(), dh.data());
       }},
      {"down wgrad", hidden, inter,
       [&] {
         kc::grouped_gemm_wgrad(direct, nullptr, hidden, nullptr, inter, d_tables + 2 * experts,
                                hidden, inter, math, s, staging.data(), false, dy16.data(),
                                h16.data());
       }},
      {"gate+up wgrad 0", 2 * inter, hidden,
       [&] {
         kc::grouped_gemm_wgrad(direct, nullptr, 2 * inter, nullptr, hidden,
                                {d_tables, d_tables + experts}, 2 * inter, hidden, math, s,
                                staging.data(), true, d_gate_up16.data(), x16.data());
       },
       false},
      {"down wgrad 0", hidden, inter,
       [&] {
         kc::grouped_gemm_wgrad(direct, nullptr, hidden, nullptr, inter, d_tables + 2 * experts,
                                hidden, inter, math, s, staging.data(), true, dy16.data(),
                                h16.data());
       },
       false}};

  // The dense reference: cuBLASLt BF16 on [rows, k] x [n, k]^T, operands already BF16.
  kc::cublaslt_gemm dense(where.index, s);
  const auto dense_ms = [&](std::int64_t n, std::int64_t k) {
    const tensor a = convert(random_f32(rows * k, 20, where).to(device::cpu()), dtype::bf16);
    const tensor b = convert(random_f32(n * k, 21, where).to(device::cpu()), dtype::bf16);
    const tensor ad = a.to(where), bd = b.to(where);
    tensor c = tensor::empty(dtype::f32, {rows * n}, where);
    return median_ms(stream, o.iterations, [&] {
      dense.gemm({ad.data(), kc::gemm_dtype::bf16, rows, k, k}, false,
                 {bd.data(), kc::gemm_dtype::bf16, n, k, k}, true,
                 {c.data(), kc::gemm_dtype::f32, rows, n, n}, 1.0f, 0.0f);
    });
  };
  const double dense_gate_up = dense_ms(2 * inter, hidden), dense_down = dense_ms(hidden, inter);

  const auto gpus = cuda::visible_gpus();
  const std::string gpu_name =
      static_cast<std::size_t>(where.index) < gpus.size() ? gpus[where.index].name : "?";
  fmt::print(
      "troupe bench experts on {} ({}): {} tokens x top-{} over {} experts (hidden {}, expert "
      "intermediate {}), BF16 activations in and out, FP32 weight gradients, medians of {} runs\n",
      o.device, gpu_name, o.tokens, top_k, experts, hidden, inter, o.iterations);
  fmt::print("cuBLASLt BF16, one dense GEMM of the same rows: gate+up {:.3f} ms, down {:.3f} ms\n",
             dense_gate_up, dense_down);
  fmt::print(
      "the experts' weights rounded to BF16 once per optimizer step: {:.3f} ms (Fprop and Dgrad "
      "read it)\n",
      rounding_ms);
  // troupe's own kernels, and CUTLASS's grouped GEMM where troupe was built with it.
  std::vector<kc::grouped_gemm_kernels> kernels;
  for (auto k : {kc::grouped_gemm_kernels::mma_sync, kc::grouped_gemm_kernels::wgmma,
                 kc::grouped_gemm_kernels::cutlass}) {
    const bool asked = o.kernels.empty() || std::find(o.kernels.begin(), o.kernels.end(),
                                                      kernels_name(k)) != o.kernels.end();
    if (k == kc::grouped_gemm_kernels::cutlass && !kc::cutlass_grouped_gemm_available()) {
      if (!o.kernels.empty() && asked)
        fail("--kernels cutlass: troupe was built without CUTLASS's headers, or {} is not sm_90",
             o.device);
      continue;
    }
    if (asked) kernels.push_back(k);
  }
  fmt::print("{:<15}", "pass");
  for (auto k : kernels)
    fmt::print(" {:>10} {:>10}", fmt::format("{} ms", kernels_name(k)), "TFLOP/s");
  fmt::print(" {:>10}\n", "dense/best");
  nlohmann::json results = nlohmann::json::array();
  std::vector<double> total(kernels.size(), 0.0);
  for (const pass_case& p : passes) {
    const double flops = 2.0 * static_cast<double>(rows) * static_cast<double>(p.n * p.k);
    const auto tflops = [&](double t) { return flops / (t * 1e-3) / 1e12; };
    const double reference = p.n == hidden ? dense_down : dense_gate_up;
    nlohmann::json row{{"pass", p.name},
                       {"n", p.n},
                       {"k", p.k},
                       {"dense_cublaslt_ms", reference},
                       {"weights_rounding_ms", rounding_ms},
                       {"onto_zeros", !p.in_layer}};
    fmt::print("{:<15}", p.name);
    double best = 0.0;
    for (std::size_t i = 0; i < kernels.size(); ++i) {
      kc::set_grouped_gemm_kernels(kernels[i]);
      const double ms = median_ms(stream, o.iterations, p.run);
      if (p.in_layer) total[i] += ms;
      best = i == 0 ? ms : std::min(best, ms);
      row[kernels_name(kernels[i])] = ms;
      fmt::print(" {:>10.3f} {:>10.1f}", ms, tflops(ms));
    }
    kc::set_grouped_gemm_kernels(kc::grouped_gemm_kernels::automatic);
    fmt::print(" {:>10.2f}\n", reference / best);
    results.push_back(row);
  }
  fmt::print("{:<15}", "one layer");
  for (double t : total) fmt::print(" {:>10.3f} {:>10}", t, "");
  fmt::print("\n");
  fmt::print("(wgrad 0: onto zeros, a step's first backward: single-writer tiles store)\n");
  if (!o.json.empty()) {
    std::ofstream out(o.json);
    out << nlohmann::json{{"device", o.device}, {"gpu", gpu_name}, {"results", results}}.dump(2)
        << "\n";
    if (!out) fail("cannot write {}", o.json);
  }
  return exit_ok;
}

}  // namespace

void add_bench_experts_command(CLI::App& bench_group, int& exit_code) {
  auto options = std::make_shared<experts_bench_options>();
  auto* command = bench_group.add_subcommand(
      "experts",
      "The routed experts' grouped GEMMs of one MoE layer on the GPU (mma.sync, wgmma and "
      "CUTLASS's) "
      "against "
      "one dense cuBLASLt GEMM of the same rows (compare: tools/reference/bench_experts_torch.py)");
  command->add_option("--device", options->device, "The GPU (cuda:N)")->capture_default_str();
  command->add_option("--config", options->config,
                      "The model's config.json: a path, tiny, or small (the CPU's small-512); by "
                      "default topologies/models/small, the GPU small config");
  command->add_option("--tokens", options->tokens, "Tokens routed (rows = tokens x top-k)")
      ->check(within({1, 1 << 20}))
      ->capture_default_str();
  command
      ->add_option("--iterations", options->iterations, "Timed runs per pass (the median counts)")
      ->check(within({1, 10000}))
      ->capture_default_str();
  command->add_option("--json", options->json, "Also write the figures to this file");
  command
      ->add_option("--kernels", options->kernels,
                   "Only these kernels (default: every one this build and GPU run)")
      ->check(CLI::IsMember({"mma.sync", "wgmma", "cutlass"}));
  command->callback([options, &exit_code] {
    try {
      exit_code = bench_experts(*options);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench experts: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
