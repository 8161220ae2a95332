#pragma once

// The routed experts' GEMMs as one launch per pass over every expert (a grouped GEMM), in FP32
// on the CUDA cores (gemm_math::exact) or with operands rounded to BF16 on the tensor cores and
// FP32 accumulation (gemm_math::bf16); inputs and outputs are f32 either way:
// rows grouped by expert (kernels/cuda/expert_combine.hpp), expert g owning rows
// [offsets[g], offsets[g+1]) with the offsets on the device, so the host never waits for the
// routing. The input rows of Fprop and Wgrad may be gathered on the fly (row r reads token
// source[r] / divisor), so the dispatch copy is not needed either. Weights are row-major [n, k]
// per expert, given as a device array of pointers, or as two such tables whose [n/2, k]
// matrices stack into one [n, k] (gate above up: one GEMM for both projections). Device
// pointers; `stream` is a cudaStream_t.
//   Fprop: y[r, :n]   (+)= x[src(r), :k] W_g^T
//   Dgrad: dx[r, :k]  (+)= dy[r, :n] W_g
//   Wgrad: dW_g[n, k]  += dy_g^T x_g        (dy rows r, x rows src(r), r in expert g)
// The BF16 math rounds its operands into `staging` first (grouped_gemm_staging_bytes; device
// memory the caller owns, free again once the stream has passed the call).

#include <cstddef>
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

/// Per-expert weights: one table of [n, k] matrices, or two of [n/2, k] stacked (first above).
/// `rounded`, when set, is their BF16 copy from round_expert_weights (of the tables' current
/// values): the BF16 math reads it instead of rounding the tables on every call.
struct weight_tables {
  weight_tables(const float* const* first_table, const float* const* second_table = nullptr,
                const void* rounded_copy = nullptr)
      : first(first_table), second(second_table), rounded(rounded_copy) {}
  const float* const* first;
  const float* const* second;
  const void* rounded;
};

/// Bytes of the BF16 copy of `groups` experts' [n, k] weights (stacked [groups * n, k] with rows
/// padded to 8 elements).
std::size_t rounded_expert_weights_bytes(std::int64_t groups, std::int64_t n, std::int64_t k);

/// Rounds the weights to BF16 into `out` (rounded_expert_weights_bytes of device memory), on
/// `stream`; the copy in `weights` is ignored. Every pass of the BF16 math reads this one layout
/// (Hopper's Dgrad reads it MN-major: no transposed copy).
void round_expert_weights(weight_tables weights, std::int64_t groups, std::int64_t n,
                          std::int64_t k, void* out, void* stream);

/// out[r, :k] = BF16 of row source(r) of x (rows.source gathers, as the passes do; ldx apart), k
/// a multiple of 8: the gathered input of Fprop and Wgrad rounded once, for both to read as
/// pre-rounded direct rows instead of each gathering and rounding it again.
void gather_rows_bf16(const grouped_rows& rows, const float* x, std::int64_t ldx, std::int64_t k,
                      void* out, void* stream);

/// Their gradients, in the same arrangement.
struct gradient_tables {
  gradient_tables(float* const* first_table, float* const* second_table = nullptr)
      : first(first_table), second(second_table) {}
  float* const* first;
  float* const* second;
};

/// Which tensor-core kernels the BF16 math uses, process-wide (for tests and benchmarks):
///  - `automatic` (the default): CUTLASS's Hopper grouped GEMM on sm_90 where troupe was built with
///    CUTLASS's headers and the pass's outputs meet TMA's alignment, else `own`; the environment's
///    TROUPE_GROUPED_GEMM=wgmma makes it `own`, =mma `mma_sync`.
///  - `own`: troupe's kernels, Hopper's warpgroup products (wgmma) for the passes where they are
///    faster on sm_90, mma.sync for the rest and on other GPUs.
///  - `wgmma`, `mma_sync`, `cutlass`: that one for every pass (cutlass: where it takes the pass's
///    operands, else `own`'s choice; an error where troupe was built without it). wgmma and
///    cutlass run on sm_90 only; elsewhere mma.sync runs.
enum class grouped_gemm_kernels { automatic, own, wgmma, mma_sync, cutlass };
void set_grouped_gemm_kernels(grouped_gemm_kernels choice);

/// Whether troupe was built with CUTLASS's grouped GEMM and the current device runs it (sm_90).
bool cutlass_grouped_gemm_available();

/// Bytes of `staging` a pass with these rows and shapes needs under `math` (0 for exact).
std::size_t grouped_gemm_staging_bytes(const grouped_rows& rows, std::int64_t n, std::int64_t k,
                                       gemm_math math);

/// Pre-rounded operands (`x_bf16`, `dy_bf16`): under the BF16 math an activation operand may come
/// already rounded to BF16 (bits, round to nearest even) by its producer, rows in the order the
/// pass reads them (not gathered: rows.source must be null for it), its leading dimension (ldx,
/// lddy) a multiple of 8, its width (k for x, n for dy) a multiple of 8 and its start 16-byte
/// aligned; the pass reads it as it is instead of rounding the f32 one (which may then be null).
/// The exact math needs the f32 operands.
/// BF16 outputs (`y_bf16`, `dx_bf16`): under the BF16 math Fprop and Dgrad may write their output
/// rounded to BF16 (round to nearest even; same leading dimension) there instead of into the f32
/// one (which may then be null), not accumulating: half the bytes of the f32 output for the GEMM
/// to store and its consumer to read. CUTLASS's kernels run Fprop and Dgrad only this way (ldy,
/// lddx multiples of 8, 16-byte aligned starts); f32 outputs run on troupe's own kernels.
void grouped_gemm_fprop(const grouped_rows& rows, const float* x, std::int64_t ldx,
                        weight_tables weights, std::int64_t n, std::int64_t k, float* y,
                        std::int64_t ldy, bool accumulate, gemm_math math, void* stream,
                        void* staging = nullptr, const void* x_bf16 = nullptr,
                        void* y_bf16 = nullptr);

/// rows.source is ignored (dy and dx are indexed by r).
void grouped_gemm_dgrad(const grouped_rows& rows, const float* dy, std::int64_t lddy,
                        weight_tables weights, std::int64_t n, std::int64_t k, float* dx,
                        std::int64_t lddx, bool accumulate, gemm_math math, void* stream,
                        void* staging = nullptr, const void* dy_bf16 = nullptr,
                        void* dx_bf16 = nullptr);

/// `onto_zeros`: dW holds zeros (nothing added since the caller zeroed it), so a block that is
/// the only writer of its tile stores instead of adding (no read of dW); the result is the same.
/// `overwrite`: dW holds anything, and gets the products alone (as if zeroed first; the experts
/// without rows get zeros).
/// On CUTLASS's kernel every gradient matrix must start 16-byte aligned (TMA stores; troupe's
/// allocations are 256-byte aligned): one that does not stops the kernel with a message.
/// `squares` (device memory for groups x tables doubles, or null): where the pass stores each
/// gradient whole (onto_zeros or overwrite) on CUTLASS's kernel, it also writes there the sum of
/// squares of each gradient matrix as it leaves it (squares[g * tables + table], tables 2 for
/// stacked gradients), from its epilogue, in a fixed order (the same bits every run). Returns
/// whether it did; where it did not, `squares` is left as it was.
bool grouped_gemm_wgrad(const grouped_rows& rows, const float* dy, std::int64_t lddy,
                        const float* x, std::int64_t ldx, gradient_tables weight_grads,
                        std::int64_t n, std::int64_t k, gemm_math math, void* stream,
                        void* staging = nullptr, bool onto_zeros = false,
                        const void* dy_bf16 = nullptr, const void* x_bf16 = nullptr,
                        bool overwrite = false, double* squares = nullptr);

}  // namespace troupe::kernels::cuda
