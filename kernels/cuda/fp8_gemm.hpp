#pragma once

// DeepSeek-V3's FP8 GEMM on one CUDA stream, from dense operands: each operand is cast to E4M3
// the way the recipe does it for this GEMM (fp8_quantize.hpp: weights per 128x128 block, the
// other operand per 1x128 tile along the reduction dimension, transposed where cuBLASLt's
// K-contiguous form needs it), then multiplied by cuBLASLt's block-scaled FP8 GEMM with FP32
// accumulation (cublaslt_gemm.hpp). Codes and scales live in buffers the engine keeps per
// stream. Plain C++ header.

#include <cstdint>

#include "kernels/cuda/cublaslt_gemm.hpp"

namespace troupe::kernels::cuda {

/// A dense row-major operand in device memory: f32 or bf16.
struct dense_operand {
  gemm_matrix matrix;       ///< type f32 or bf16
  bool transposed = false;  ///< the GEMM uses matrix^T
  bool weight = false;      ///< quantised per 128x128 block (else per 1x128 tile along K)
};

class fp8_gemm_engine {
 public:
  fp8_gemm_engine(int ordinal, void* stream);
  ~fp8_gemm_engine();
  fp8_gemm_engine(const fp8_gemm_engine&) = delete;
  fp8_gemm_engine& operator=(const fp8_gemm_engine&) = delete;

  /// C = alpha op(A) op(B) + beta C through E4M3; C is f32 or bf16. Fails naming the shapes when
  /// cuBLASLt's rules are not met (K and, for a weight gradient, the tokens a multiple of 16; m a
  /// multiple of 4; n a multiple of 8 for a bf16 C, 4 for f32).
  void gemm(const dense_operand& a, const dense_operand& b, gemm_matrix c, float alpha, float beta);

  /// The casts alone, into the engine's buffers (what gemm() does before multiplying): for
  /// benchmarks that time the quantisation apart from the GEMM.
  void quantize(const dense_operand& a, const dense_operand& b);
  /// Casts the left operand again (an activation changes every step; the weight's cast stays).
  void quantize_left(const dense_operand& a);
  /// The GEMM alone on what the last quantize() left in the buffers.
  void multiply(gemm_matrix c, float alpha, float beta);

  cublaslt_gemm& cublaslt() { return gemm_; }

 private:
  struct buffer {
    void* data = nullptr;
    std::size_t bytes = 0;
  };
  void* reserve(buffer& b, std::size_t bytes);
  /// Casts `op` (op(matrix) is outer x K, or K x outer for the right operand) into [outer, K].
  fp8_operand cast(const dense_operand& op, bool right, buffer& codes, buffer& scales);

  int ordinal_;
  void* stream_;
  cublaslt_gemm gemm_;
  buffer codes_a_, scales_a_, codes_b_, scales_b_;
  fp8_operand a_, b_;  // what the last quantize() produced
  std::int64_t k_ = 0;
};

}  // namespace troupe::kernels::cuda
