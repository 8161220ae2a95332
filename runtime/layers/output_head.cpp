#include "runtime/layers/output_head.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cross_entropy.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/dispatch/device_ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/tensor/tensor.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/convert.hpp"
#include "kernels/cuda/cross_entropy.hpp"
#include "kernels/dispatch/op_timing.hpp"
#endif

namespace troupe {

namespace {

#if TROUPE_HAVE_CUDA
/// The host's targets on the context's GPU.
tensor device_targets(const exec_context& context, const std::int32_t* targets, std::int64_t rows) {
  tensor out = tensor::empty(dtype::i32, {rows}, context.where());
  cuda::copy_async(out.data(), targets, static_cast<std::size_t>(rows) * sizeof(std::int32_t),
                   cuda::copy_kind::host_to_device, context.stream(), context.where().index);
  cuda::synchronize_stream(context.stream(), context.where().index);
  return out;
}

/// Per-row losses and log-sum-exps of the logits on the GPU; the loss sum and count on the host.
head_loss gpu_cross_entropy(const exec_context& context, const float* logits, const tensor& targets,
                            std::int64_t rows, std::int64_t vocab, tensor& lse) {
  const kernels::op_scope timing(context.abi(), kernels::op_class::loss);
  const tensor losses = tensor::empty(dtype::f32, {rows}, context.where());
  lse = tensor::empty(dtype::f32, {rows}, context.where());
  kernels::cuda::cross_entropy_forward(logits, vocab, targets.data_as<std::int32_t>(), rows, vocab,
                                       losses.data_as<float>(), lse.data_as<float>(),
                                       context.stream());
  const tensor total = tensor::empty(dtype::u8, {16}, context.where());
  kernels::cuda::sum_losses(losses.data_as<float>(), targets.data_as<std::int32_t>(), rows,
                            static_cast<double*>(total.data()),
                            reinterpret_cast<std::int64_t*>(static_cast<char*>(total.data()) + 8),
                            context.stream());
  const tensor host = total.to(device::cpu());
  cuda::synchronize_stream(context.stream(), context.where().index);
  head_loss loss;
  std::memcpy(&loss.sum, host.data(), sizeof(double));
  std::memcpy(&loss.labelled, static_cast<const char*>(host.data()) + 8, sizeof(std::int64_t));
  return loss;
}
#endif

}  // namespace

std::int64_t head_chunk_rows(std::int64_t vocab) {
  constexpr std::int64_t bytes = std::int64_t{256} << 20;
  return std::max<std::int64_t>(1, bytes / (std::max<std::int64_t>(vocab, 1) * 4));
}

namespace {

/// logits [rows, vocab] = x W^T.
void head_logits(const exec_context& context, const float* x, const float* weight, float* logits,
                 std::int64_t rows, std::int64_t width, std::int64_t vocab) {
  kernels::ops::gemm_f32(context.abi(), false, true, rows, vocab, width, 1.0f, x, width, weight,
                         width, 0.0f, logits, vocab, kernels::ops::context_math(context.abi()));
}

/// The loss of `rows` rows of logits against their targets.
head_loss logits_loss(const exec_context& context, const float* logits, const std::int32_t* targets,
                      std::int64_t rows, std::int64_t vocab) {
  if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
    tensor lse;
    return gpu_cross_entropy(context, logits, device_targets(context, targets, rows), rows, vocab,
                             lse);
#endif
  }
  // NOTES: fixed pieces of 16 rows summed in order, so the loss does not depend on the threads.
  constexpr std::int64_t piece = 16;
  const std::int64_t pieces = (rows + piece - 1) / piece;
  std::vector<double> sums(static_cast<std::size_t>(pieces));
  std::vector<std::int64_t> labelled(static_cast<std::size_t>(pieces));
  context.pool().parallel_for(pieces, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t p = begin; p < end; ++p) {
      const std::int64_t first = p * piece, count = std::min(piece, rows - first);
      sums[static_cast<std::size_t>(p)] =
          kernels::cpu::cross_entropy_forward(logits + first * vocab, targets + first, count, vocab,
                                              nullptr, &labelled[static_cast<std::size_t>(p)]);
    }
  });
  head_loss loss;
  for (std::int64_t p = 0; p < pieces; ++p) {
    loss.sum += sums[static_cast<std::size_t>(p)];
    loss.labelled += labelled[static_cast<std::size_t>(p)];
  }
  return loss;
}

/// dlogits (may be logits) = scale * (softmax - onehot) of `rows` host rows, on the pool.
void host_softmax_gradient(const exec_context& context, const float* logits,
                           const std::int32_t* targets, std::int64_t rows, std::int64_t vocab,
                           float scale, float* dlogits) {
  context.pool().parallel_for(rows, 8, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::cross_entropy_backward(logits + begin * vocab, targets + begin, end - begin,
                                         vocab, scale, dlogits + begin * vocab);
  });
}

/// dx += alpha * dlogits W and dweight += alpha * dlogits^T x (dweight null: not) for `rows`
/// rows of FP32 dlogits.
void head_products(const exec_context& context, const float* dlogits, float alpha, const float* x,
                   const float* weight, float* dx, float* dweight, std::int64_t rows,
                   std::int64_t width, std::int64_t vocab) {
  const auto math = kernels::ops::context_math(context.abi());
  kernels::ops::gemm_f32(context.abi(), false, false, rows, width, vocab, alpha, dlogits, vocab,
                         weight, width, 1.0f, dx, width, math);
  if (dweight != nullptr)
    kernels::ops::gemm_f32(context.abi(), true, false, vocab, width, rows, alpha, dlogits, vocab, x,
                           width, 1.0f, dweight, width, math);
}

/// The chunks of `rows` rows, `chunk` at a time: f(first, count).
template <class F>
void for_each_chunk(std::int64_t rows, std::int64_t chunk, F&& f) {
  for (std::int64_t first = 0; first < rows; first += chunk)
    f(first, std::min(chunk, rows - first));
}

}  // namespace

head_loss output_head_forward(const exec_context& context, const float* x, const float* weight,
                              float* logits, const std::int32_t* targets, std::int64_t rows,
                              std::int64_t width, std::int64_t vocab) {
  head_logits(context, x, weight, logits, rows, width, vocab);
  if (targets == nullptr) return {};
  return logits_loss(context, logits, targets, rows, vocab);
}

head_loss output_head_loss(const exec_context& context, const float* x, const float* weight,
                           const std::int32_t* targets, std::int64_t rows, std::int64_t width,
                           std::int64_t vocab, std::int64_t chunk_rows) {
  const std::int64_t chunk = std::min(rows, chunk_rows > 0 ? chunk_rows : head_chunk_rows(vocab));
  head_loss total;
  if (rows == 0) return total;
  tensor logits = tensor::empty(dtype::f32, {chunk, vocab}, context.where());
  for_each_chunk(rows, chunk, [&](std::int64_t first, std::int64_t count) {
    head_logits(context, x + first * width, weight, logits.data_as<float>(), count, width, vocab);
    const head_loss part =
        logits_loss(context, logits.data_as<float>(), targets + first, count, vocab);
    total.sum += part.sum;
    total.labelled += part.labelled;
  });
  return total;
}

bool head_keeps_gradient(const exec_context& context, std::int64_t rows, std::int64_t vocab) {
  // NOTES: on the host at most 64 MiB, so the gradients kept by micro-batches in flight (a
  // pipeline's) stay small beside their activations; larger heads recompute, as before.
  if (context.where().is_cpu()) return rows * vocab * 4 <= (std::int64_t{64} << 20);
  return TROUPE_HAVE_CUDA &&
         kernels::ops::context_math(context.abi()) == kernels::ops::gemm_math::bf16 &&
         rows * vocab * 2 <= (std::int64_t{1} << 30);
}

namespace {

#if TROUPE_HAVE_CUDA
/// `rows` x `cols` f32 (contiguous) as BF16 bits on the context's device.
tensor to_bf16(const exec_context& context, const float* from, std::int64_t rows,
               std::int64_t cols) {
  tensor out = tensor::empty(dtype::bf16, {rows, cols}, context.where());
  kernels::cuda::f32_to_bf16(from, out.data_as<std::uint16_t>(), rows * cols, context.stream());
  return out;
}

/// The GPU's kept gradient: BF16, the logits a chunk at a time.
// NOTES: its BF16 rounding is what the backward's BF16 GEMMs would make of an FP32 copy anyway,
// so keeping it costs no precision.
head_loss loss_keeping_bf16_gradient(const exec_context& context, const float* x,
                                     const float* weight, const std::int32_t* targets,
                                     std::int64_t rows, std::int64_t width, std::int64_t vocab,
                                     tensor& d_logits) {
  head_loss total;
  d_logits = tensor::empty(dtype::bf16, {rows, vocab}, context.where());
  if (rows == 0) return total;
  const tensor x16 = to_bf16(context, x, rows, width);
  const tensor w16 = to_bf16(context, weight, vocab, width);
  const std::int64_t chunk = std::min(rows, head_chunk_rows(vocab));
  tensor logits = tensor::empty(dtype::f32, {chunk, vocab}, context.where());
  for_each_chunk(rows, chunk, [&](std::int64_t first, std::int64_t count) {
    kernels::ops::gemm_bf16(context.abi(), false, true, count, vocab, width, 1.0f,
                            x16.data_as<std::uint16_t>() + first * width, width,
                            w16.data_as<std::uint16_t>(), width, 0.0f, logits.data_as<float>(),
                            vocab);
    const tensor on_device = device_targets(context, targets + first, count);
    tensor lse;
    const head_loss part =
        gpu_cross_entropy(context, logits.data_as<float>(), on_device, count, vocab, lse);
    total.sum += part.sum;
    total.labelled += part.labelled;
    const kernels::op_scope timing(context.abi(), kernels::op_class::loss);
    kernels::cuda::cross_entropy_backward_bf16(
        logits.data_as<float>(), vocab, on_device.data_as<std::int32_t>(), lse.data_as<float>(),
        count, vocab, 1.0f, d_logits.data_as<std::uint16_t>() + first * vocab, vocab,
        context.stream());
  });
  return total;
}
#endif

/// The host's kept gradient: the one chunk's FP32 logits turned into it in place.
head_loss loss_keeping_f32_gradient(const exec_context& context, const float* x,
                                    const float* weight, const std::int32_t* targets,
                                    std::int64_t rows, std::int64_t width, std::int64_t vocab,
                                    tensor& d_logits) {
  d_logits = tensor::empty(dtype::f32, {rows, vocab}, context.where());
  if (rows == 0) return {};
  auto* logits = d_logits.data_as<float>();
  head_logits(context, x, weight, logits, rows, width, vocab);
  const head_loss total = logits_loss(context, logits, targets, rows, vocab);
  host_softmax_gradient(context, logits, targets, rows, vocab, 1.0f, logits);
  return total;
}

}  // namespace

head_loss output_head_loss_keeping_gradient(const exec_context& context, const float* x,
                                            const float* weight, const std::int32_t* targets,
                                            std::int64_t rows, std::int64_t width,
                                            std::int64_t vocab, tensor& d_logits) {
  // NOTES: the gradient the backward needs is softmax - onehot times a scale known only then;
  // kept, it spares the backward the logits' GEMM and softmax again.
  if (!head_keeps_gradient(context, rows, vocab))
    fail(
        "output head: keeping the gradient of [{}, {}] needs at most 64 MiB of it on the host, "
        "or a GPU computing in BF16 with at most 1 GiB",
        rows, vocab);
  if (context.where().is_cpu())
    return loss_keeping_f32_gradient(context, x, weight, targets, rows, width, vocab, d_logits);
#if TROUPE_HAVE_CUDA
  return loss_keeping_bf16_gradient(context, x, weight, targets, rows, width, vocab, d_logits);
#else
  return {};
#endif
}

void output_head_backward_kept(const exec_context& context, const float* x, const float* weight,
                               const tensor& d_logits, float scale, float* dx, float* dweight,
                               std::int64_t rows, std::int64_t width, std::int64_t vocab) {
  const dtype kept = context.where().is_cpu() ? dtype::f32 : dtype::bf16;
  if (!d_logits.defined() || d_logits.type() != kept || d_logits.numel() != rows * vocab)
    fail("output head: no kept gradient of [{}, {}] for this backward", rows, vocab);
  if (rows == 0) return;
  if (context.where().is_cpu())
    return head_products(context, d_logits.data_as<float>(), scale, x, weight, dx, dweight, rows,
                         width, vocab);
#if TROUPE_HAVE_CUDA
  const auto* g = d_logits.data_as<std::uint16_t>();
  const tensor w16 = to_bf16(context, weight, vocab, width);
  kernels::ops::gemm_bf16(context.abi(), false, false, rows, width, vocab, scale, g, vocab,
                          w16.data_as<std::uint16_t>(), width, 1.0f, dx, width);
  if (dweight != nullptr) {
    const tensor x16 = to_bf16(context, x, rows, width);
    kernels::ops::gemm_bf16(context.abi(), true, false, vocab, width, rows, scale, g, vocab,
                            x16.data_as<std::uint16_t>(), width, 1.0f, dweight, width);
  }
#endif
}

void output_head_backward(const exec_context& context, const float* x, const float* weight,
                          const std::int32_t* targets, float scale, float* dx, float* dweight,
                          std::int64_t rows, std::int64_t width, std::int64_t vocab,
                          std::int64_t chunk_rows) {
  const std::int64_t chunk = std::min(rows, chunk_rows > 0 ? chunk_rows : head_chunk_rows(vocab));
  if (rows == 0) return;
  tensor logits = tensor::empty(dtype::f32, {chunk, vocab}, context.where());
  tensor dlogits = tensor::empty(dtype::f32, {chunk, vocab}, context.where());
  for_each_chunk(rows, chunk, [&](std::int64_t first, std::int64_t count) {
    // NOTES: the chunk's logits again, where the forward kept no gradient
    // (head_keeps_gradient): one more GEMM of the head against [rows, vocab] FP32 logits held
    // from forward to backward (1 GiB per micro-batch of 8k tokens at a 32k vocabulary).
    const float* xc = x + first * width;
    head_logits(context, xc, weight, logits.data_as<float>(), count, width, vocab);
    if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
      const tensor on_device = device_targets(context, targets + first, count);
      tensor lse;
      gpu_cross_entropy(context, logits.data_as<float>(), on_device, count, vocab, lse);
      const kernels::op_scope timing(context.abi(), kernels::op_class::loss);
      kernels::cuda::cross_entropy_backward(
          logits.data_as<float>(), vocab, on_device.data_as<std::int32_t>(), lse.data_as<float>(),
          count, vocab, scale, dlogits.data_as<float>(), context.stream());
#endif
    } else {
      host_softmax_gradient(context, logits.data_as<float>(), targets + first, count, vocab, scale,
                            dlogits.data_as<float>());
    }
    head_products(context, dlogits.data_as<float>(), 1.0f, xc, weight, dx + first * width, dweight,
                  count, width, vocab);
  });
}

}  // namespace troupe
