#include "kernels/cuda/fp8_gemm.hpp"

#include <string>

#include <fmt/format.h>
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/fp8_quantize.hpp"

namespace troupe::kernels::cuda {

fp8_gemm_engine::fp8_gemm_engine(int ordinal, void* stream)
    : ordinal_(ordinal), stream_(stream), gemm_(ordinal, stream) {}

fp8_gemm_engine::~fp8_gemm_engine() {
  (void)cudaSetDevice(ordinal_);
  for (buffer* b : {&codes_a_, &scales_a_, &codes_b_, &scales_b_})
    if (b->data != nullptr) (void)cudaFreeAsync(b->data, static_cast<cudaStream_t>(stream_));
}

void* fp8_gemm_engine::reserve(buffer& b, std::size_t bytes) {
  if (bytes <= b.bytes) return b.data;
  // NOTES: stream-ordered: the old buffer is freed after the work already enqueued that reads
  // it, and the new one is usable by what is enqueued next; no synchronisation.
  const auto stream = static_cast<cudaStream_t>(stream_);
  if (b.data != nullptr) TROUPE_CUDA_CHECK(cudaFreeAsync(b.data, stream));
  b = {};
  TROUPE_CUDA_CHECK(cudaMallocAsync(&b.data, bytes, stream));
  b.bytes = bytes;
  return b.data;
}

fp8_operand fp8_gemm_engine::cast(const dense_operand& op, bool right, buffer& codes,
                                  buffer& scales) {
  const gemm_matrix& x = op.matrix;
  if (x.type == gemm_dtype::e4m3)
    fail_kernel(fmt::format("an FP8 GEMM operand must be f32 or bf16 before its cast"));
  // The GEMM wants [outer, K] with K contiguous: the left operand is op(A) = [m, K], the right
  // one op(B)^T = [n, K]. A stored operand in the other orientation is cast transposed.
  const bool transpose = right ? !op.transposed : op.transposed;
  const std::int64_t outer = transpose ? x.cols : x.rows, k = transpose ? x.rows : x.cols;
  const fp8_scaling scaling = op.weight ? fp8_scaling::blocks_128x128 : fp8_scaling::tiles_1x128;
  const fp8_scale_layout layout = scale_layout(scaling, outer, k);

  fp8_operand result;
  result.codes = static_cast<std::uint8_t*>(reserve(codes, static_cast<std::size_t>(outer * k)));
  result.scale = static_cast<float*>(reserve(scales, static_cast<std::size_t>(layout.count) * 4));
  result.scaling = scaling;
  result.outer = outer;
  result.ld = k;

  fp8_output target{const_cast<std::uint8_t*>(result.codes), const_cast<float*>(result.scale),
                    layout.stride_outer, layout.stride_k};
  fp8_outputs outputs;
  if (op.weight)
    (transpose ? outputs.blocks_transposed : outputs.blocks) = target;
  else
    (transpose ? outputs.column_tiles_transposed : outputs.row_tiles) = target;
  if (x.type == gemm_dtype::bf16)
    fp8_quantize(static_cast<const std::uint16_t*>(x.data), x.ld, x.rows, x.cols, outputs, stream_);
  else
    fp8_quantize(static_cast<const float*>(x.data), x.ld, x.rows, x.cols, outputs, stream_);
  return result;
}

void fp8_gemm_engine::quantize(const dense_operand& a, const dense_operand& b) {
  const std::int64_t k = a.transposed ? a.matrix.rows : a.matrix.cols;
  const std::int64_t k_b = b.transposed ? b.matrix.cols : b.matrix.rows;
  if (k != k_b) fail_kernel(fmt::format("FP8 GEMM: op(A) has K = {} but op(B) has K = {}", k, k_b));
  if (a.weight && b.weight)
    fail_kernel(fmt::format("FP8 GEMM: only one operand can be the weight"));
  TROUPE_CUDA_CHECK(cudaSetDevice(ordinal_));
  a_ = cast(a, false, codes_a_, scales_a_);
  b_ = cast(b, true, codes_b_, scales_b_);
  k_ = k;
}

void fp8_gemm_engine::quantize_left(const dense_operand& a) {
  TROUPE_CUDA_CHECK(cudaSetDevice(ordinal_));
  a_ = cast(a, false, codes_a_, scales_a_);
}

void fp8_gemm_engine::multiply(gemm_matrix c, float alpha, float beta) {
  gemm_.fp8_gemm(a_, b_, k_, c, alpha, beta);
}

void fp8_gemm_engine::gemm(const dense_operand& a, const dense_operand& b, gemm_matrix c,
                           float alpha, float beta) {
  // Checked before any work is enqueued (cuBLASLt's rules; fp8_gemm checks them again).
  const std::int64_t m = a.transposed ? a.matrix.cols : a.matrix.rows;
  const std::int64_t k = a.transposed ? a.matrix.rows : a.matrix.cols;
  const std::int64_t n = b.transposed ? b.matrix.rows : b.matrix.cols;
  const std::int64_t n_multiple = c.type == gemm_dtype::bf16 ? 8 : 4;
  if (k % 16 != 0 || m % 4 != 0 || n % n_multiple != 0)
    fail_kernel(fmt::format(
        "FP8 GEMM of [{} x {}] x [{} x {}] on cuda:{}: cuBLASLt's block-scaled FP8 needs the "
        "reduction dimension a multiple of 16 (got {}), m a multiple of 4 (got {}) and n a "
        "multiple of {} (got {})",
        m, k, k, n, ordinal_, k, m, n_multiple, n));
  quantize(a, b);
  multiply(c, alpha, beta);
}

}  // namespace troupe::kernels::cuda
