#include "runtime/layers/output_head.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/cross_entropy.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/dispatch/device_ops.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/tensor/tensor.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
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

void output_head_backward(const exec_context& context, const float* x, const float* weight,
                          const std::int32_t* targets, float scale, float* dx, float* dweight,
                          std::int64_t rows, std::int64_t width, std::int64_t vocab,
                          std::int64_t chunk_rows) {
  const std::int64_t chunk = std::min(rows, chunk_rows > 0 ? chunk_rows : head_chunk_rows(vocab));
  if (rows == 0) return;
  const auto math = kernels::ops::context_math(context.abi());
  tensor logits = tensor::empty(dtype::f32, {chunk, vocab}, context.where());
  tensor dlogits = tensor::empty(dtype::f32, {chunk, vocab}, context.where());
  for_each_chunk(rows, chunk, [&](std::int64_t first, std::int64_t count) {
    // NOTES: the chunk's logits again rather than kept from the forward: one more GEMM of the
    // head against [rows, vocab] FP32 logits held from forward to backward (1 GiB per
    // micro-batch of 8k tokens at a 32k vocabulary).
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
      context.pool().parallel_for(count, 8, [&](std::int64_t begin, std::int64_t end) {
        kernels::cpu::cross_entropy_backward(logits.data_as<float>() + begin * vocab,
                                             targets + first + begin, end - begin, vocab, scale,
                                             dlogits.data_as<float>() + begin * vocab);
      });
    }
    kernels::ops::gemm_f32(context.abi(), false, false, count, width, vocab, 1.0f,
                           dlogits.data_as<float>(), vocab, weight, width, 1.0f, dx + first * width,
                           width, math);
    if (dweight != nullptr)
      kernels::ops::gemm_f32(context.abi(), true, false, vocab, width, count, 1.0f,
                             dlogits.data_as<float>(), vocab, xc, width, 1.0f, dweight, width,
                             math);
  });
}

}  // namespace troupe
