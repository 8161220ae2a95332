#pragma once

// GEMMs on one CUDA stream through cuBLASLt, for row-major operands:
//   C[m, n] = alpha * op(A) op(B) + beta * C,   op(X) = X or X^T
// in FP32 (true FP32, no TF32: for parity tests), in BF16 with FP32 accumulation and a BF16 or
// FP32 output, and in E4M3 with DeepSeek-V3's block scaling (one FP32 scale per 1x128 tile of
// an activation or gradient along K, one per 128x128 block of a weight), FP32 accumulation.
// An algorithm is chosen once per problem (cuBLASLt's heuristic, then a cache); the workspace
// belongs to the stream. Plain C++ header: no CUDA or cuBLAS type crosses it.

#include <cstddef>
#include <cstdint>
#include <memory>

namespace troupe::kernels::cuda {

enum class gemm_dtype { f32, bf16, e4m3 };

/// How f32 operands are multiplied: exactly (FP32 FMA, the parity path), or rounded to BF16 on
/// the tensor cores with FP32 accumulation (cuBLAS's CUBLAS_COMPUTE_32F_FAST_16BF: the "bf16"
/// precision with FP32 storage). BF16 operands always use the tensor cores.
enum class gemm_math { exact, bf16 };

/// A row-major matrix in device memory: rows x cols, leading dimension ld (in elements).
struct gemm_matrix {
  const void* data = nullptr;
  gemm_dtype type = gemm_dtype::f32;
  std::int64_t rows = 0, cols = 0, ld = 0;
};

/// How the scales of an E4M3 operand are laid out.
enum class fp8_scaling {
  tiles_1x128,    ///< one scale per 1x128 tile along K (activations, gradients)
  blocks_128x128  ///< one scale per 128x128 block (weights)
};

/// An E4M3 operand stored [outer, K] (K contiguous) and its scales (scale_inv, device memory) in
/// the layout fp8_scale_layout gives.
struct fp8_operand {
  const std::uint8_t* codes = nullptr;
  const float* scale = nullptr;
  fp8_scaling scaling = fp8_scaling::tiles_1x128;
  std::int64_t outer = 0;  ///< m for the left operand, n for the right
  std::int64_t ld = 0;     ///< >= K, a multiple of 16
};

/// Strides (in floats) of the scale array cuBLASLt reads for an operand of `outer` x `k`:
/// scale (i, j) of tile/block row i and K-tile j is at i * stride_outer + j * stride_k; `count` is
/// the floats to allocate.
struct fp8_scale_layout {
  std::int64_t stride_outer = 0, stride_k = 0, count = 0;
};
fp8_scale_layout scale_layout(fp8_scaling scaling, std::int64_t outer, std::int64_t k);

/// One stream's cuBLASLt state: a handle, a workspace and the algorithms chosen so far.
class cublaslt_gemm {
 public:
  /// On cuda:`ordinal`, enqueueing on `stream` (a cudaStream_t), with a workspace of
  /// `workspace_bytes` (32 MiB: what cuBLAS asks for on Hopper).
  cublaslt_gemm(int ordinal, void* stream, std::size_t workspace_bytes = std::size_t{32} << 20);
  ~cublaslt_gemm();
  cublaslt_gemm(const cublaslt_gemm&) = delete;
  cublaslt_gemm& operator=(const cublaslt_gemm&) = delete;

  /// C = alpha op(A) op(B) + beta C. A, B: both f32, or both bf16. C: f32 (either input), or bf16
  /// (bf16 inputs). `math` applies to f32 inputs. Fails naming the shapes when they do not fit or
  /// cuBLASLt has no algorithm.
  void gemm(const gemm_matrix& a, bool transpose_a, const gemm_matrix& b, bool transpose_b,
            gemm_matrix c, float alpha, float beta, gemm_math math = gemm_math::exact);

  /// C[m, n] = alpha * A[m, K] B[n, K]^T + beta * C with block-scaled E4M3 operands (each K
  /// contiguous), FP32 accumulation; C is bf16 or f32. One operand may be blocks_128x128 (the
  /// weight); Wgrad passes two tiles_1x128 operands. K must be a multiple of 16.
  void fp8_gemm(const fp8_operand& a, const fp8_operand& b, std::int64_t k, gemm_matrix c,
                float alpha, float beta);

  int device() const { return ordinal_; }
  void* stream() const { return stream_; }

  /// How many distinct problems have had an algorithm chosen (the cache's size).
  std::size_t cached_algorithms() const;

 private:
  struct state;
  int ordinal_;
  void* stream_;
  std::unique_ptr<state> state_;
};

}  // namespace troupe::kernels::cuda
