// The MoE side of kernels/dispatch/device_ops.hpp: the FP32 gate GEMM, the router and balance
// loss, token permutation and combine, SwiGLU.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cpu/expert_combine.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/router.hpp"
#include "kernels/cpu/swiglu.hpp"
#include "kernels/dispatch/device_ops.hpp"
#include "kernels/dispatch/op_timing.hpp"
#include "kernels/dispatch/require_cuda.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/convert.hpp"
#include "kernels/cuda/cublaslt_gemm.hpp"
#include "kernels/cuda/expert_combine.hpp"
#include "kernels/cuda/grouped_gemm.hpp"
#include "kernels/cuda/per_stream.hpp"
#include "kernels/cuda/router.hpp"
#include "kernels/cuda/swiglu.hpp"
#endif

namespace troupe::kernels {

using detail::require_cuda;

namespace ops {

#if TROUPE_HAVE_CUDA
namespace {

cuda::router_shape to_cuda(const cpu::router_shape& r) {
  return {r.experts,   r.groups,  r.topk_groups, r.topk,
          r.normalize, r.scaling, r.group_of,    r.group_top};
}

cuda::gemm_math to_cuda(gemm_math math) {
  return math == gemm_math::bf16 ? cuda::gemm_math::bf16 : cuda::gemm_math::exact;
}

/// Scratch bytes for one call, on the context's device.
struct scratch_bytes {
  scratch_bytes(const troupe_exec_context* context, std::size_t bytes)
      : allocator(context->allocator), device(context->device), size(bytes) {
    data = size > 0 ? allocate_bytes(context, size) : nullptr;
  }
  ~scratch_bytes() {
    if (data != nullptr) release_bytes(allocator, device, data);
  }
  scratch_bytes(const scratch_bytes&) = delete;
  scratch_bytes& operator=(const scratch_bytes&) = delete;
  const troupe_allocator* allocator;
  DLDevice device;
  std::size_t size;
  void* data;
};

}  // namespace
#endif

#if TROUPE_HAVE_CUDA
namespace {
/// The cuBLASLt engine of the context's stream.
// NOTES: one engine per stream for this plugin's copy of the kernels (each plugin links its
// own); the runtime's provider keeps its own.
cuda::cublaslt_gemm& gemm_engine(const troupe_exec_context* context) {
  static cuda::per_stream<cuda::cublaslt_gemm> engines;
  return engines.on(context->device.device_id, context->stream);
}

/// C (f32) = alpha op(A) op(B) + beta C, row-major, A and B of `type`, on the context's stream.
void device_gemm(const troupe_exec_context* context, cuda::gemm_dtype type, bool transpose_a,
                 bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                 const void* a, std::int64_t lda, const void* b, std::int64_t ldb, float beta,
                 void* c, std::int64_t ldc, cuda::gemm_math math,
                 cuda::gemm_dtype c_type = cuda::gemm_dtype::f32) {
  const cuda::gemm_matrix left{a, type, transpose_a ? k : m, transpose_a ? m : k, lda};
  const cuda::gemm_matrix right{b, type, transpose_b ? n : k, transpose_b ? k : n, ldb};
  gemm_engine(context).gemm(left, transpose_a, right, transpose_b, {c, c_type, m, n, ldc}, alpha,
                            beta, math);
}
}  // namespace
#endif

gemm_math context_math(const troupe_exec_context* context) {
  if (!on_gpu(context) || context->gemm == nullptr || context->gemm->name == nullptr)
    return gemm_math::exact;
  return std::strcmp(context->gemm->name, TROUPE_GEMM_CUBLASLT) == 0 ? gemm_math::exact
                                                                     : gemm_math::bf16;
}

namespace {
/// The GEMM's shape for `troupe bench train --op-shapes` (op_scope::detail).
void describe_gemm(op_scope& timing, bool transpose_a, bool transpose_b, std::int64_t m,
                   std::int64_t n, std::int64_t k, float beta, const char* operands) {
  if (timing.wants_detail())
    timing.detail(std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + " " +
                  (transpose_a ? "T" : "N") + (transpose_b ? "T" : "N") + " " + operands +
                  (beta != 0.0f ? " +C" : ""));
}
}  // namespace

void gemm_f32(const troupe_exec_context* context, bool transpose_a, bool transpose_b,
              std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const float* a,
              std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
              std::int64_t ldc, gemm_math math) {
  op_scope timing(context, op_class::dense_gemm);
  describe_gemm(timing, transpose_a, transpose_b, m, n, k, beta, "f32");
  if (!on_gpu(context)) {
    cpu::sgemm_on_pool(context->pool, {transpose_a, transpose_b, m, n, k, lda, ldb, ldc}, alpha, a,
                       b, beta, c);
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  device_gemm(context, cuda::gemm_dtype::f32, transpose_a, transpose_b, m, n, k, alpha, a, lda, b,
              ldb, beta, c, ldc, to_cuda(math));
#else
  (void)math;
#endif
}

void gemm_bf16(const troupe_exec_context* context, bool transpose_a, bool transpose_b,
               std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const std::uint16_t* a,
               std::int64_t lda, const std::uint16_t* b, std::int64_t ldb, float beta, float* c,
               std::int64_t ldc) {
  op_scope timing(context, op_class::dense_gemm);
  describe_gemm(timing, transpose_a, transpose_b, m, n, k, beta, "bf16");
  if (!on_gpu(context)) throw std::invalid_argument("gemm_bf16: BF16 operands need a GPU context");
  require_cuda();
#if TROUPE_HAVE_CUDA
  device_gemm(context, cuda::gemm_dtype::bf16, transpose_a, transpose_b, m, n, k, alpha, a, lda, b,
              ldb, beta, c, ldc, cuda::gemm_math::exact);
#else
  (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda;
  (void)b, (void)ldb, (void)beta, (void)c, (void)ldc;
#endif
}

void gemm_bf16(const troupe_exec_context* context, bool transpose_a, bool transpose_b,
               std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const std::uint16_t* a,
               std::int64_t lda, const std::uint16_t* b, std::int64_t ldb, std::uint16_t* c,
               std::int64_t ldc) {
  op_scope timing(context, op_class::dense_gemm);
  describe_gemm(timing, transpose_a, transpose_b, m, n, k, 0.0f, "bf16 -> bf16");
  if (!on_gpu(context)) throw std::invalid_argument("gemm_bf16: BF16 operands need a GPU context");
  require_cuda();
#if TROUPE_HAVE_CUDA
  device_gemm(context, cuda::gemm_dtype::bf16, transpose_a, transpose_b, m, n, k, alpha, a, lda, b,
              ldb, 0.0f, c, ldc, cuda::gemm_math::exact, cuda::gemm_dtype::bf16);
#else
  (void)transpose_a, (void)transpose_b, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda;
  (void)b, (void)ldb, (void)c, (void)ldc;
#endif
}

void router_forward(const troupe_exec_context* context, const cpu::router_shape& shape,
                    const float* logits, const float* bias, float* scores, std::int32_t* selected,
                    float* gates, std::int64_t tokens) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    const std::int64_t e = shape.experts, k = shape.topk;
    parallel_for(context, tokens, 32, [&](std::int64_t begin, std::int64_t end) {
      cpu::router_forward(shape, logits + begin * e, bias, scores + begin * e, selected + begin * k,
                          gates + begin * k, end - begin);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::router_forward(to_cuda(shape), logits, bias, scores, selected, gates, tokens,
                       context->stream);
#endif
}

void router_backward(const troupe_exec_context* context, const cpu::router_shape& shape,
                     const float* scores, const std::int32_t* selected, const float* d_gates,
                     float* d_logits, std::int64_t tokens) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    const std::int64_t e = shape.experts, k = shape.topk;
    parallel_for(context, tokens, 32, [&](std::int64_t begin, std::int64_t end) {
      cpu::router_backward(shape, scores + begin * e, selected + begin * k, d_gates + begin * k,
                           d_logits + begin * e, end - begin);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::router_backward(to_cuda(shape), scores, selected, d_gates, d_logits, tokens,
                        context->stream);
#endif
}

void balance_loss_forward(const troupe_exec_context* context, const cpu::router_shape& shape,
                          const float* scores, const std::int32_t* selected, std::int64_t sequences,
                          std::int64_t length, double alpha, float* loss) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    *loss = static_cast<float>(
        cpu::balance_loss_forward(shape, scores, selected, sequences, length, alpha));
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  scratch_bytes scratch(context,
                        cuda::balance_loss_scratch_bytes(sequences, length, shape.experts));
  cuda::balance_loss_forward(to_cuda(shape), scores, selected, sequences, length, alpha, loss,
                             scratch.data, scratch.size, context->stream);
#endif
}

void balance_loss_backward(const troupe_exec_context* context, const cpu::router_shape& shape,
                           const float* scores, const std::int32_t* selected,
                           std::int64_t sequences, std::int64_t length, double alpha, float d_loss,
                           float* d_logits) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    cpu::balance_loss_backward(shape, scores, selected, sequences, length, alpha, d_loss, d_logits);
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  scratch_bytes scratch(context,
                        cuda::balance_loss_scratch_bytes(sequences, length, shape.experts));
  cuda::balance_loss_backward(to_cuda(shape), scores, selected, sequences, length, alpha, d_loss,
                              d_logits, scratch.data, scratch.size, context->stream);
#endif
}

void count_selections(const troupe_exec_context* context, const std::int32_t* selected,
                      std::int64_t pairs, std::int64_t experts, std::int64_t* counts) {
  const op_scope timing(context, op_class::routing);
  zero_bytes(context, counts, static_cast<std::size_t>(experts) * sizeof(std::int64_t));
  if (!on_gpu(context)) {
    cpu::count_selections(selected, pairs, counts);
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::count_selections(selected, pairs, counts, context->stream);
#endif
}

void group_by_expert(const troupe_exec_context* context, const std::int32_t* selected,
                     std::int64_t tokens, std::int64_t topk, std::int64_t experts,
                     std::int64_t* order, std::int64_t* position, std::int64_t* offsets) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    cpu::expert_grouping grouping;
    cpu::group_by_expert(selected, tokens, topk, experts, grouping);
    std::copy(grouping.order.begin(), grouping.order.end(), order);
    std::copy(grouping.position.begin(), grouping.position.end(), position);
    std::copy(grouping.offsets.begin(), grouping.offsets.end(), offsets);
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  scratch_bytes scratch(context, cuda::group_by_expert_scratch_bytes(tokens * topk, experts));
  cuda::group_by_expert(selected, tokens, topk, experts, {order, position, offsets}, scratch.data,
                        scratch.size, context->stream);
#endif
}

void gather_expert_rows(const troupe_exec_context* context, const float* x,
                        const std::int64_t* order, std::int64_t topk, std::int64_t width,
                        float* out, std::int64_t begin, std::int64_t end) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    cpu::gather_expert_rows(x, order, topk, width, out, begin, end);
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::gather_expert_rows(x, order, topk, width, out, begin, end, context->stream);
#endif
}

namespace {
/// The BF16 rows' overloads run on a GPU only.
void require_gpu_rows(const troupe_exec_context* context, const char* what) {
  if (!on_gpu(context))
    throw std::runtime_error(std::string(what) + ": BF16 rows are for GPU contexts");
  require_cuda();
}
}  // namespace

void combine_forward(const troupe_exec_context* context, const float* rows, const float* gates,
                     const std::int64_t* position, std::int64_t topk, std::int64_t width, float* y,
                     std::int64_t tokens) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    parallel_for(context, tokens, 32, [&](std::int64_t begin, std::int64_t end) {
      cpu::combine_forward(rows, gates, position, topk, width, y, begin, end);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::combine_forward(rows, gates, position, topk, width, y, tokens, context->stream);
#endif
}

void combine_backward(const troupe_exec_context* context, const float* dy, const float* rows,
                      const float* gates, const std::int64_t* order, std::int64_t topk,
                      std::int64_t width, float* d_gates, float* d_rows, std::int64_t pairs,
                      std::uint16_t* d_rows16) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    if (d_rows16 != nullptr)
      throw std::runtime_error("combine_backward: BF16 row gradients are for GPU contexts");
    parallel_for(context, pairs, 64, [&](std::int64_t begin, std::int64_t end) {
      cpu::combine_backward(dy, rows, gates, order, topk, width, d_gates, d_rows, begin, end);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::combine_backward(dy, rows, gates, order, topk, width, d_gates, d_rows, 0, pairs,
                         context->stream, d_rows16);
#endif
}

void scatter_add_rows(const troupe_exec_context* context, const float* d_rows,
                      const std::int64_t* position, std::int64_t topk, std::int64_t width,
                      float* dx, std::int64_t tokens) {
  const op_scope timing(context, op_class::routing);
  if (!on_gpu(context)) {
    parallel_for(context, tokens, 32, [&](std::int64_t begin, std::int64_t end) {
      cpu::scatter_add_rows(d_rows, position, topk, width, dx, begin, end);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::scatter_add_rows(d_rows, position, topk, width, dx, tokens, context->stream);
#endif
}

void combine_forward(const troupe_exec_context* context, const std::uint16_t* rows,
                     const float* gates, const std::int64_t* position, std::int64_t topk,
                     std::int64_t width, float* y, std::int64_t tokens) {
  const op_scope timing(context, op_class::routing);
  require_gpu_rows(context, "combine_forward");
#if TROUPE_HAVE_CUDA
  cuda::combine_forward(rows, gates, position, topk, width, y, tokens, context->stream);
#else
  (void)rows, (void)gates, (void)position, (void)topk, (void)width, (void)y, (void)tokens;
#endif
}

void combine_backward(const troupe_exec_context* context, const float* dy,
                      const std::uint16_t* rows, const float* gates, const std::int64_t* order,
                      std::int64_t topk, std::int64_t width, float* d_gates, float* d_rows,
                      std::int64_t pairs, std::uint16_t* d_rows16, const std::int64_t* position) {
  const op_scope timing(context, op_class::routing);
  require_gpu_rows(context, "combine_backward");
#if TROUPE_HAVE_CUDA
  const std::int64_t tokens = topk > 0 ? pairs / topk : 0;
  if (position != nullptr && d_rows == nullptr && d_rows16 != nullptr &&
      cuda::combine_backward_by_token_fits(dy, rows, d_rows16, topk, width, tokens))
    return cuda::combine_backward_by_token(dy, rows, gates, position, topk, width, d_gates,
                                           d_rows16, tokens, context->stream);
  cuda::combine_backward(dy, rows, gates, order, topk, width, d_gates, d_rows, 0, pairs,
                         context->stream, d_rows16);
#else
  (void)dy, (void)rows, (void)gates, (void)order, (void)topk, (void)width, (void)d_gates,
      (void)d_rows, (void)pairs, (void)d_rows16, (void)position;
#endif
}

void scatter_add_rows(const troupe_exec_context* context, const std::uint16_t* d_rows,
                      const std::int64_t* position, std::int64_t topk, std::int64_t width,
                      float* dx, std::int64_t tokens) {
  const op_scope timing(context, op_class::routing);
  require_gpu_rows(context, "scatter_add_rows");
#if TROUPE_HAVE_CUDA
  cuda::scatter_add_rows(d_rows, position, topk, width, dx, tokens, context->stream);
#else
  (void)d_rows, (void)position, (void)topk, (void)width, (void)dx, (void)tokens;
#endif
}

void swiglu_forward_fused(const troupe_exec_context* context, const float* gate_up, float* h,
                          std::int64_t rows, std::int64_t width) {
  const op_scope timing(context, op_class::elementwise);
  if (!on_gpu(context)) {
    parallel_for(context, rows, 16, [&](std::int64_t begin, std::int64_t end) {
      cpu::swiglu_forward_fused(gate_up + begin * 2 * width, h + begin * width, end - begin, width);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::swiglu_forward_fused(gate_up, h, rows, width, context->stream);
#endif
}

void swiglu_backward_fused(const troupe_exec_context* context, const float* dh,
                           const float* gate_up, float* dgate_up, std::int64_t rows,
                           std::int64_t width, bool accumulate) {
  const op_scope timing(context, op_class::elementwise);
  if (!on_gpu(context)) {
    parallel_for(context, rows, 16, [&](std::int64_t begin, std::int64_t end) {
      if (!accumulate) std::fill(dgate_up + begin * 2 * width, dgate_up + end * 2 * width, 0.0f);
      cpu::swiglu_backward_fused(dh + begin * width, gate_up + begin * 2 * width,
                                 dgate_up + begin * 2 * width, end - begin, width);
    });
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::swiglu_backward_fused(dh, gate_up, dgate_up, rows, width, context->stream, accumulate);
#endif
}

namespace {

#if TROUPE_HAVE_CUDA
cuda::grouped_rows to_cuda(const grouped_rows& r) {
  return {r.offsets, r.groups, r.rows, r.source, r.divisor};
}
#endif

void require_gpu(const troupe_exec_context* context, const char* what) {
  if (!on_gpu(context))
    throw std::runtime_error(std::string(what) +
                             ": grouped expert GEMMs run on a GPU; the host runs one per expert");
  require_cuda();
}

}  // namespace

bool grouped_expert_gemms(const troupe_exec_context* context) {
  // NOTES: under a GEMM plugin (fp8) too: cuBLASLt's block-scaled FP8 needs every expert's
  // token count a multiple of 4 (16 for its weight gradient), which routing does not give; until
  // a grouped FP8 kernel exists the experts multiply in BF16 there (context_math).
  return on_gpu(context);
}

namespace {
#if TROUPE_HAVE_CUDA
/// The staging of a BF16 grouped pass, from the context's allocator (none for the exact math).
device_array<std::uint16_t> grouped_staging(const troupe_exec_context* context,
                                            const cuda::grouped_rows& rows, std::int64_t n,
                                            std::int64_t k) {
  device_array<std::uint16_t> staging;
  const std::size_t bytes =
      cuda::grouped_gemm_staging_bytes(rows, n, k, to_cuda(context_math(context)));
  if (bytes > 0) staging.allocate(context, (bytes + 1) / 2);
  return staging;
}
#endif
}  // namespace

std::size_t rounded_expert_weights_bytes(std::int64_t groups, std::int64_t n, std::int64_t k) {
  require_cuda();
#if TROUPE_HAVE_CUDA
  return cuda::rounded_expert_weights_bytes(groups, n, k);
#else
  (void)groups, (void)n, (void)k;
  return 0;
#endif
}

void round_expert_weights(const troupe_exec_context* context, expert_weights weights,
                          std::int64_t groups, std::int64_t n, std::int64_t k, void* out) {
  const op_scope timing(context, op_class::expert_gemm);
  require_gpu(context, "round_expert_weights");
#if TROUPE_HAVE_CUDA
  cuda::round_expert_weights({weights.first, weights.second}, groups, n, k, out, context->stream);
#else
  (void)weights, (void)groups, (void)n, (void)k, (void)out;
#endif
}

void grouped_fprop(const troupe_exec_context* context, const grouped_rows& rows, const float* x,
                   std::int64_t ldx, expert_weights weights, std::int64_t n, std::int64_t k,
                   float* y, std::int64_t ldy, bool accumulate, const std::uint16_t* x_bf16,
                   std::uint16_t* y_bf16) {
  const op_scope timing(context, op_class::expert_gemm);
  require_gpu(context, "grouped_fprop");
#if TROUPE_HAVE_CUDA
  const cuda::grouped_rows r = to_cuda(rows);
  auto staging = grouped_staging(context, r, n, k);
  cuda::grouped_gemm_fprop(r, x, ldx, {weights.first, weights.second, weights.rounded}, n, k, y,
                           ldy, accumulate, to_cuda(context_math(context)), context->stream,
                           staging.data(), x_bf16, y_bf16);
#else
  (void)rows, (void)x, (void)ldx, (void)weights, (void)n, (void)k, (void)y, (void)ldy,
      (void)accumulate, (void)x_bf16, (void)y_bf16;
#endif
}

void grouped_dgrad(const troupe_exec_context* context, const grouped_rows& rows, const float* dy,
                   std::int64_t lddy, expert_weights weights, std::int64_t n, std::int64_t k,
                   float* dx, std::int64_t lddx, bool accumulate, const std::uint16_t* dy_bf16,
                   std::uint16_t* dx_bf16) {
  const op_scope timing(context, op_class::expert_gemm);
  require_gpu(context, "grouped_dgrad");
#if TROUPE_HAVE_CUDA
  const cuda::grouped_rows r = to_cuda(rows);
  auto staging = grouped_staging(context, r, n, k);
  cuda::grouped_gemm_dgrad(r, dy, lddy, {weights.first, weights.second, weights.rounded}, n, k, dx,
                           lddx, accumulate, to_cuda(context_math(context)), context->stream,
                           staging.data(), dy_bf16, dx_bf16);
#else
  (void)rows, (void)dy, (void)lddy, (void)weights, (void)n, (void)k, (void)dx, (void)lddx,
      (void)accumulate, (void)dy_bf16, (void)dx_bf16;
#endif
}

bool grouped_wgrad(const troupe_exec_context* context, const grouped_rows& rows, const float* dy,
                   std::int64_t lddy, const float* x, std::int64_t ldx, expert_gradients grads,
                   std::int64_t n, std::int64_t k, gradients_hold held,
                   const std::uint16_t* dy_bf16, const std::uint16_t* x_bf16, double* squares) {
  const op_scope timing(context, op_class::expert_gemm);
  require_gpu(context, "grouped_wgrad");
#if TROUPE_HAVE_CUDA
  const cuda::grouped_rows r = to_cuda(rows);
  auto staging = grouped_staging(context, r, n, k);
  return cuda::grouped_gemm_wgrad(r, dy, lddy, x, ldx, {grads.first, grads.second}, n, k,
                                  to_cuda(context_math(context)), context->stream, staging.data(),
                                  held == gradients_hold::zeros, dy_bf16, x_bf16,
                                  held == gradients_hold::anything, squares);
#else
  (void)rows, (void)dy, (void)lddy, (void)x, (void)ldx, (void)grads, (void)n, (void)k, (void)held,
      (void)dy_bf16, (void)x_bf16, (void)squares;
  return false;
#endif
}

bool grouped_bf16_operands(const troupe_exec_context* context) {
  return grouped_expert_gemms(context) && context_math(context) == gemm_math::bf16;
}

void gather_rows_bf16(const troupe_exec_context* context, const grouped_rows& rows, const float* x,
                      std::int64_t ldx, std::int64_t k, std::uint16_t* out) {
  const op_scope timing(context, op_class::routing);
  require_gpu(context, "gather_rows_bf16");
#if TROUPE_HAVE_CUDA
  cuda::gather_rows_bf16(to_cuda(rows), x, ldx, k, out, context->stream);
#else
  (void)rows, (void)x, (void)ldx, (void)k, (void)out;
#endif
}

void round_to_bf16(const troupe_exec_context* context, const float* x, std::uint16_t* out,
                   std::int64_t count) {
  const op_scope timing(context, op_class::elementwise);
  require_gpu(context, "round_to_bf16");
#if TROUPE_HAVE_CUDA
  cuda::f32_to_bf16(x, out, count, context->stream);
#else
  (void)x, (void)out, (void)count;
#endif
}

void swiglu_forward_fused_bf16(const troupe_exec_context* context, const float* gate_up,
                               std::uint16_t* h, std::int64_t rows, std::int64_t width) {
  const op_scope timing(context, op_class::elementwise);
  require_gpu(context, "swiglu_forward_fused_bf16");
#if TROUPE_HAVE_CUDA
  cuda::swiglu_forward_fused_bf16(gate_up, h, rows, width, context->stream);
#else
  (void)gate_up, (void)h, (void)rows, (void)width;
#endif
}

void swiglu_backward_fused_bf16(const troupe_exec_context* context, const float* dh,
                                const float* gate_up, std::uint16_t* dgate_up, std::int64_t rows,
                                std::int64_t width) {
  const op_scope timing(context, op_class::elementwise);
  require_gpu(context, "swiglu_backward_fused_bf16");
#if TROUPE_HAVE_CUDA
  cuda::swiglu_backward_fused_bf16(dh, gate_up, dgate_up, rows, width, context->stream);
#else
  (void)dh, (void)gate_up, (void)dgate_up, (void)rows, (void)width;
#endif
}

void swiglu_forward_fused_bf16(const troupe_exec_context* context, const std::uint16_t* gate_up,
                               std::uint16_t* h, std::int64_t rows, std::int64_t width) {
  const op_scope timing(context, op_class::elementwise);
  require_gpu(context, "swiglu_forward_fused_bf16");
#if TROUPE_HAVE_CUDA
  cuda::swiglu_forward_fused_bf16(gate_up, h, rows, width, context->stream);
#else
  (void)gate_up, (void)h, (void)rows, (void)width;
#endif
}

void swiglu_backward_fused_bf16(const troupe_exec_context* context, const std::uint16_t* dh,
                                const std::uint16_t* gate_up, std::uint16_t* dgate_up,
                                std::int64_t rows, std::int64_t width) {
  const op_scope timing(context, op_class::elementwise);
  require_gpu(context, "swiglu_backward_fused_bf16");
#if TROUPE_HAVE_CUDA
  cuda::swiglu_backward_fused_bf16(dh, gate_up, dgate_up, rows, width, context->stream);
#else
  (void)dh, (void)gate_up, (void)dgate_up, (void)rows, (void)width;
#endif
}

}  // namespace ops

}  // namespace troupe::kernels
