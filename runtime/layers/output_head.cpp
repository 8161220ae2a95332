#include "runtime/layers/output_head.hpp"

#include <cstring>

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

head_loss output_head_forward(const exec_context& context, const float* x, const float* weight,
                              float* logits, const std::int32_t* targets, std::int64_t rows,
                              std::int64_t width, std::int64_t vocab) {
  kernels::ops::gemm_f32(context.abi(), false, true, rows, vocab, width, 1.0f, x, width, weight,
                         width, 0.0f, logits, vocab, kernels::ops::context_math(context.abi()));
  head_loss loss;
  if (targets == nullptr) return loss;
  if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
    tensor lse;
    return gpu_cross_entropy(context, logits, device_targets(context, targets, rows), rows, vocab,
                             lse);
#endif
  }
  loss.sum =
      kernels::cpu::cross_entropy_forward(logits, targets, rows, vocab, nullptr, &loss.labelled);
  return loss;
}

void output_head_backward(const exec_context& context, const float* x, const float* weight,
                          const float* logits, const std::int32_t* targets, float scale, float* dx,
                          float* dweight, std::int64_t rows, std::int64_t width,
                          std::int64_t vocab) {
  tensor dlogits = tensor::empty(dtype::f32, {rows, vocab}, context.where());
  if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
    const tensor on_device = device_targets(context, targets, rows);
    tensor lse;
    gpu_cross_entropy(context, logits, on_device, rows, vocab, lse);
    const kernels::op_scope timing(context.abi(), kernels::op_class::loss);
    kernels::cuda::cross_entropy_backward(logits, vocab, on_device.data_as<std::int32_t>(),
                                          lse.data_as<float>(), rows, vocab, scale,
                                          dlogits.data_as<float>(), context.stream());
#endif
  } else {
    context.pool().parallel_for(rows, 8, [&](std::int64_t begin, std::int64_t end) {
      kernels::cpu::cross_entropy_backward(logits + begin * vocab, targets + begin, end - begin,
                                           vocab, scale, dlogits.data_as<float>() + begin * vocab);
    });
  }
  const auto math = kernels::ops::context_math(context.abi());
  kernels::ops::gemm_f32(context.abi(), false, false, rows, width, vocab, 1.0f,
                         dlogits.data_as<float>(), vocab, weight, width, 1.0f, dx, width, math);
  if (dweight != nullptr)
    kernels::ops::gemm_f32(context.abi(), true, false, vocab, width, rows, 1.0f,
                           dlogits.data_as<float>(), vocab, x, width, 1.0f, dweight, width, math);
}

}  // namespace troupe
