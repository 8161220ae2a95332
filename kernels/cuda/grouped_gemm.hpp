#pragma once

// The routed experts' GEMMs as one launch per pass over every expert (a grouped GEMM), in FP32
// on the CUDA cores (gemm_math::exact) or with operands rounded to BF16 on the tensor cores and
// FP32 accumulation (gemm_math::bf16); inputs and outputs are f32 either way:
// rows grouped by expert (kernels/cuda/expert_combine.hpp), expert g owning rows
// [offsets[g], offsets[g+1]) with the offsets on the device, so the host never waits for the
// routing. The input rows of Fprop and Wgrad may be gathered on the fly (row r reads token
// source[r] / divisor), so the dispatch copy is not needed either. Weights are row-major [n, k]
// per expert, given as a device array of pointers. Device pointers; `stream` is a cudaStream_t.
//   Fprop: y[r, :n]   (+)= x[src(r), :k] W_g^T
//   Dgrad: dx[r, :k]  (+)= dy[r, :n] W_g
//   Wgrad: dW_g[n, k]  += dy_g^T x_g        (dy rows r, x rows src(r), r in expert g)

#include <cstdint>

#include "kernels/cuda/cublaslt_gemm.hpp"  // gemm_math

namespace troupe::kernels::cuda {

struct grouped_rows {
  const std::int64_t* offsets = nullptr;  ///< [groups + 1], on the device
  std::int64_t groups = 0;
  std::int64_t rows = 0;                 ///< offsets[groups], known to the host
  const std::int64_t* source = nullptr;  ///< [rows]: row r reads x[source[r] / divisor] (null: r)
  std::int64_t divisor = 1;
};

void grouped_gemm_fprop(const grouped_rows& rows, const float* x, std::int64_t ldx,
                        const float* const* weights, std::int64_t n, std::int64_t k, float* y,
                        std::int64_t ldy, bool accumulate, gemm_math math, void* stream);

/// rows.source is ignored (dy and dx are indexed by r).
void grouped_gemm_dgrad(const grouped_rows& rows, const float* dy, std::int64_t lddy,
                        const float* const* weights, std::int64_t n, std::int64_t k, float* dx,
                        std::int64_t lddx, bool accumulate, gemm_math math, void* stream);

void grouped_gemm_wgrad(const grouped_rows& rows, const float* dy, std::int64_t lddy,
                        const float* x, std::int64_t ldx, float* const* weight_grads,
                        std::int64_t n, std::int64_t k, gemm_math math, void* stream);

}  // namespace troupe::kernels::cuda
