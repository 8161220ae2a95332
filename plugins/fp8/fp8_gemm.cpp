#include "plugins/fp8/fp8_gemm.hpp"

#include <vector>

#include "kernels/cpu/fp8_quantize.hpp"
#include "kernels/cpu/gemm.hpp"
#include "plugins/common/plugin_support.hpp"

namespace troupe::plugin {

namespace {

bool is_f32_matrix(const DLTensor* t) {
  return t != nullptr && t->ndim == 2 && t->dtype.code == kDLFloat && t->dtype.bits == 32 &&
         t->dtype.lanes == 1 && (t->strides == nullptr || t->strides[1] == 1) &&
         t->device.device_type == kDLCPU;
}

std::int64_t leading(const DLTensor* t) {
  return t->strides != nullptr ? t->strides[0] : t->shape[1];
}

/// A dequantised copy of `t` (stored rows x cols): weights in 128x128 blocks, others in 1x128
/// tiles along the reduction dimension, which runs along the stored rows when `k_along_rows`.
std::vector<float> round_trip(const troupe_exec_context* context, const DLTensor* t, bool weight,
                              bool k_along_rows) {
  const std::int64_t rows = t->shape[0], cols = t->shape[1], ld = leading(t);
  const float* in = data_of(*t);
  std::vector<float> out(static_cast<std::size_t>(rows * cols));
  namespace k = kernels::cpu;
  constexpr std::int64_t tile = k::fp8_tile;
  if (weight) {
    // Blocks of 128 rows are independent: split them over the pool.
    parallel_for(context, (rows + tile - 1) / tile, 1, [&](std::int64_t begin, std::int64_t end) {
      const std::int64_t r0 = begin * tile, r1 = std::min(rows, end * tile);
      k::fp8_round_trip_blocks(in + r0 * ld, ld, out.data() + r0 * cols, cols, r1 - r0, cols);
    });
  } else if (k_along_rows) {
    parallel_for(context, (rows + tile - 1) / tile, 1, [&](std::int64_t begin, std::int64_t end) {
      const std::int64_t r0 = begin * tile, r1 = std::min(rows, end * tile);
      k::fp8_round_trip_column_tiles(in + r0 * ld, ld, out.data() + r0 * cols, cols, r1 - r0, cols);
    });
  } else {
    parallel_for(context, rows, 16, [&](std::int64_t begin, std::int64_t end) {
      k::fp8_round_trip_row_tiles(in + begin * ld, ld, out.data() + begin * cols, cols, end - begin,
                                  cols);
    });
  }
  return out;
}

}  // namespace

troupe_status fp8_gemm(const troupe_exec_context* context, const troupe_gemm_call& call,
                       troupe_error* error) {
  if (!is_f32_matrix(call.a) || !is_f32_matrix(call.b) || !is_f32_matrix(call.c))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "fp8 GEMM operands must be 2-D f32 CPU tensors with unit inner stride (the CUDA "
                "path is not built yet)");
  const std::int64_t m = call.transpose_a ? call.a->shape[1] : call.a->shape[0];
  const std::int64_t k = call.transpose_a ? call.a->shape[0] : call.a->shape[1];
  const std::int64_t k_b = call.transpose_b ? call.b->shape[1] : call.b->shape[0];
  const std::int64_t n = call.transpose_b ? call.b->shape[0] : call.b->shape[1];
  if (k != k_b || call.c->shape[0] != m || call.c->shape[1] != n)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "GEMM extents disagree: op(A) {}x{}, op(B) {}x{}, C {}x{}", m, k, k_b, n,
                call.c->shape[0], call.c->shape[1]);
  return guarded(error, [&] {
    // op(A) = A is [M, K] (K along A's columns); op(A) = A^T means A is [K, M] (K along its rows).
    const auto a = round_trip(context, call.a, call.weight_operand == 1, call.transpose_a != 0);
    // op(B) = B is [K, N] (K along B's rows); op(B) = B^T means B is [N, K] (K along its columns).
    const auto b = round_trip(context, call.b, call.weight_operand == 2, call.transpose_b == 0);
    const kernels::cpu::gemm_shape shape{
        call.transpose_a != 0, call.transpose_b != 0, m, n, k, call.a->shape[1],
        call.b->shape[1],      leading(call.c)};
    kernels::cpu::sgemm_on_pool(context->pool, shape, call.alpha, a.data(), b.data(), call.beta,
                                data_of(*call.c));
    return TROUPE_STATUS_OK;
  });
}

}  // namespace troupe::plugin
