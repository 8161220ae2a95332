// `troupe bench attention`: milliseconds and TFLOP/s of the causal flash attention kernels
// (kernels/cuda/attention.hpp) forward and backward, on MLA's layouts: queries [tokens, heads x
// qk], keys' nope columns and values interleaved per head in one [tokens, heads x (nope + v)]
// buffer, the rope key [tokens, rope] shared by every head.
// tools/reference/bench_attention_torch.py measures PyTorch's scaled_dot_product_attention on the
// same shapes for the ratio.
#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "kernels/cuda/attention.hpp"
#include "kernels/cuda/attention_cudnn.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/tensor/tensor.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/gpu_timing.hpp"

namespace troupe::cli {

namespace {

namespace kc = kernels::cuda;

struct attention_bench_options {
  std::string device = "cuda:0";
  std::int64_t batch = 4, heads = 16, length = 1024, qk = 96, rope = 32, v = 64;
  int iterations = 20;
  std::string precision = "bf16";
};

int bench_attention(const attention_bench_options& o) {
  const device where = parse_device(o.device);
  if (!where.is_cuda())
    fail("--device {}: troupe bench attention measures the GPU kernels; give cuda:N", o.device);
  if (o.precision != "bf16" && o.precision != "fp32")
    fail("--precision: use bf16 or fp32, not {}", o.precision);
  if (o.rope >= o.qk) fail("--rope {} must be below --qk {}", o.rope, o.qk);
  cuda::require_device(where.index);
  cuda::stream stream(where.index);
  cuda::stream_guard guard(stream);
  const bool bf16 = o.precision == "bf16";
  const kc::attention_problem p{
      o.batch, o.heads, o.length, o.qk, o.rope, o.v, 1.0f / std::sqrt(static_cast<float>(o.qk))};
  if (bf16 && !kc::attention_bf16_supported(p))
    fmt::print(
        "troupe's BF16 kernels are not built for qk {} / v {}: their lines time the FP32 "
        "kernels they fall back to\n",
        o.qk, o.v);
  const std::int64_t tokens = o.batch * o.length, nope = o.qk - o.rope;
  const std::int64_t q_width = o.heads * o.qk, kv_width = o.heads * (nope + o.v),
                     o_width = o.heads * o.v;
  const tensor q = random_f32(tokens * q_width, 1, where),
               kv = random_f32(tokens * kv_width, 2, where),
               rope = random_f32(tokens * o.rope, 3, where),
               d_out = random_f32(tokens * o_width, 4, where);
  tensor out = tensor::empty(dtype::f32, {tokens * o_width}, where);
  tensor lse = tensor::empty(dtype::f32, {o.batch * o.heads * o.length}, where);
  tensor dq = tensor::empty(dtype::f32, {tokens * q_width}, where);
  tensor d_kv = tensor::empty(dtype::f32, {tokens * kv_width}, where);
  tensor d_rope = tensor::empty(dtype::f32, {o.heads * tokens * o.rope}, where);
  tensor scratch = tensor::empty(
      dtype::f32, {std::max<std::int64_t>(kc::attention_backward_scratch(p), 1)}, where);
  const auto operand = [&](const tensor& t, std::int64_t offset, std::int64_t head_stride,
                           std::int64_t row_stride) {
    return kc::attention_operand{t.data_as<const float>() + offset, o.length * row_stride,
                                 head_stride, row_stride};
  };
  const auto result = [&](tensor& t, std::int64_t offset, std::int64_t batch_stride,
                          std::int64_t head_stride, std::int64_t row_stride) {
    return kc::attention_result{t.data_as<float>() + offset, batch_stride, head_stride, row_stride};
  };
  const kc::attention_operand qo = operand(q, 0, o.qk, q_width),
                              ko = operand(kv, 0, nope + o.v, kv_width),
                              ro = operand(rope, 0, 0, o.rope),
                              vo = operand(kv, nope, nope + o.v, kv_width),
                              oo = operand(out, 0, o.v, o_width),
                              doo = operand(d_out, 0, o.v, o_width);
  const kc::attention_result out_r = result(out, 0, o.length * o_width, o.v, o_width);
  const auto forward = [&] {
    if (bf16)
      kc::attention_forward_bf16(p, qo, ko, ro, vo, out_r, lse.data_as<float>(), stream.native());
    else
      kc::attention_forward(p, qo, ko, ro, vo, out_r, lse.data_as<float>(), stream.native());
  };
  const kc::attention_result dq_r = result(dq, 0, o.length * q_width, o.qk, q_width),
                             dk_r = result(d_kv, 0, o.length * kv_width, nope + o.v, kv_width),
                             dr_r = result(d_rope, 0, o.length * o.rope, tokens * o.rope, o.rope),
                             dv_r = result(d_kv, nope, o.length * kv_width, nope + o.v, kv_width);
  const auto backward = [&] {
    if (bf16)
      kc::attention_backward_bf16(p, qo, ko, ro, vo, oo, doo, lse.data_as<const float>(), dq_r,
                                  dk_r, dr_r, dv_r, scratch.data_as<float>(), stream.native());
    else
      kc::attention_backward(p, qo, ko, ro, vo, oo, doo, lse.data_as<const float>(), dq_r, dk_r,
                             dr_r, dv_r, scratch.data_as<float>(), stream.native());
  };
  forward();
  const auto forward_ms = event_times_ms(stream, o.iterations, forward);
  const auto backward_ms = event_times_ms(stream, o.iterations, backward);
  // cuDNN's fused attention on the same operands, where it runs them (what training takes).
  std::vector<double> cudnn_forward_ms, cudnn_backward_ms;
  if (bf16 && kc::attention_cudnn_supported(p, false) && kc::attention_cudnn_supported(p, true)) {
    const std::size_t bytes = std::max(kc::attention_cudnn_staging_bytes(p, false),
                                       kc::attention_cudnn_staging_bytes(p, true));
    tensor staging = tensor::empty(dtype::u8, {static_cast<std::int64_t>(bytes)}, where);
    cudnn_forward_ms = event_times_ms(stream, o.iterations, [&] {
      kc::attention_forward_cudnn(p, qo, ko, ro, vo, out_r, lse.data_as<float>(), stream.native(),
                                  staging.data());
    });
    cudnn_backward_ms = event_times_ms(stream, o.iterations, [&] {
      kc::attention_backward_cudnn(p, qo, ko, ro, vo, oo, doo, lse.data_as<const float>(), dq_r,
                                   dk_r, dr_r, dv_r, stream.native(), staging.data());
    });
  }
  // Causal products: row i sees i + 1 keys. Forward: S = Q K^T and O = P V; backward: S again,
  // dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q.
  const double pairs = static_cast<double>(o.batch * o.heads) * static_cast<double>(o.length) *
                       static_cast<double>(o.length + 1) / 2.0;
  const double qk = static_cast<double>(o.qk), v = static_cast<double>(o.v);
  const double forward_flops = 2.0 * pairs * (qk + v),
               backward_flops = 2.0 * pairs * (3.0 * qk + 2.0 * v);
  const auto line = [&](const char* what, const std::vector<double>& ms, double flops) {
    const double median = ms[ms.size() / 2];
    fmt::print("  {:<9} {:8.3f} ms (median of {}; min {:.3f}, max {:.3f})  {:7.1f} TFLOP/s\n", what,
               median, ms.size(), ms.front(), ms.back(), flops / (median * 1e-3) / 1e12);
  };
  fmt::print(
      "troupe bench attention on {} ({}): batch {}, heads {}, length {}, qk {} (rope {}), v {}, "
      "causal\n",
      o.device, o.precision, o.batch, o.heads, o.length, o.qk, o.rope, o.v);
  line("forward", forward_ms, forward_flops);
  line("backward", backward_ms, backward_flops);
  if (!cudnn_forward_ms.empty()) {
    fmt::print(
        "  cuDNN's fused attention (operands packed from FP32 and results widened back "
        "included; what bf16 training runs):\n");
    line("forward", cudnn_forward_ms, forward_flops);
    line("backward", cudnn_backward_ms, backward_flops);
  }
  return exit_ok;
}

}  // namespace

void add_bench_attention_command(CLI::App& bench_group, int& exit_code) {
  auto options = std::make_shared<attention_bench_options>();
  auto* command = bench_group.add_subcommand(
      "attention",
      "Milliseconds and TFLOP/s of the GPU's causal flash attention, forward and backward, on "
      "MLA's layouts (compare: tools/reference/bench_attention_torch.py)");
  command->add_option("--device", options->device, "The GPU (cuda:N)")->capture_default_str();
  for (auto [name, value, what] :
       {std::tuple{"--batch", &options->batch, "Sequences"},
        std::tuple{"--heads", &options->heads, "Attention heads"},
        std::tuple{"--length", &options->length, "Tokens per sequence"},
        std::tuple{"--qk", &options->qk, "Query and key width per head (nope + rope)"},
        std::tuple{"--rope", &options->rope, "The shared rope key's width"},
        std::tuple{"--v", &options->v, "Value width per head"}})
    command->add_option(name, *value, what)->check(within({1, 1 << 20}))->capture_default_str();
  command->add_option("--iterations", options->iterations, "Timed runs (the median counts)")
      ->check(within({1, 10000}))
      ->capture_default_str();
  command->add_option("--precision", options->precision, "bf16 (tensor cores) or fp32")
      ->capture_default_str();
  command->callback([options, &exit_code] {
    try {
      exit_code = bench_attention(*options);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench attention: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
