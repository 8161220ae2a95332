#pragma once

// Token permutation to routed experts and back on a CUDA device, the same contract and the same
// bits of grouping as kernels/cpu/expert_combine.hpp: assignments (token * K + slot) sorted by
// expert, tokens ascending within an expert, and combine summing each token's slots in slot
// order. The grouping is a stable radix sort (CUB) on the device: no host round trip. Indices
// are int64 as on the CPU, so a layer keeps one grouping layout on both devices. Device
// pointers; `stream` is a cudaStream_t.

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda {

/// The grouping's device arrays (the caller's memory).
struct expert_grouping_view {
  std::int64_t* order = nullptr;     ///< [T*K] assignment of each row
  std::int64_t* position = nullptr;  ///< [T*K] row of each assignment
  std::int64_t* offsets = nullptr;   ///< [E+1] first row of each expert
};

std::size_t group_by_expert_scratch_bytes(std::int64_t pairs, std::int64_t experts);

/// Groups the assignments of selected[tokens, topk] by expert (ids in [0, experts)).
void group_by_expert(const std::int32_t* selected, std::int64_t tokens, std::int64_t topk,
                     std::int64_t experts, expert_grouping_view out, void* scratch,
                     std::size_t scratch_bytes, void* stream);

/// out[r] = x[order[r] / topk] for rows [begin, end) (out + r * width, as on the CPU).
void gather_expert_rows(const float* x, const std::int64_t* order, std::int64_t topk,
                        std::int64_t width, float* out, std::int64_t begin, std::int64_t end,
                        void* stream);

/// y[t] += sum over slots in slot order of gates[t*K+k] * rows[position[t*K+k]], t < tokens.
void combine_forward(const float* rows, const float* gates, const std::int64_t* position,
                     std::int64_t topk, std::int64_t width, float* y, std::int64_t tokens,
                     void* stream);

/// For rows [begin, end): d_gates[a] = dy[t] . rows[r], d_rows[r] = gates[a] * dy[t] with
/// a = order[r], t = a / topk (both overwritten). With `d_rows16` (BF16 bits) instead of d_rows
/// (null), the row gradients are written rounded to BF16, as the experts' BF16 GEMMs read them.
void combine_backward(const float* dy, const float* rows, const float* gates,
                      const std::int64_t* order, std::int64_t topk, std::int64_t width,
                      float* d_gates, float* d_rows, std::int64_t begin, std::int64_t end,
                      void* stream, std::uint16_t* d_rows16 = nullptr);

/// dx[t] += sum over slots in slot order of d_rows[position[t*K+k]], t < tokens.
void scatter_add_rows(const float* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t tokens, void* stream);

/// The same three over rows held as BF16 bits (the experts' grouped GEMMs' BF16 outputs), each
/// element widened to f32 as it is read; the sums stay f32.
void combine_forward(const std::uint16_t* rows, const float* gates, const std::int64_t* position,
                     std::int64_t topk, std::int64_t width, float* y, std::int64_t tokens,
                     void* stream);
void combine_backward(const float* dy, const std::uint16_t* rows, const float* gates,
                      const std::int64_t* order, std::int64_t topk, std::int64_t width,
                      float* d_gates, float* d_rows, std::int64_t begin, std::int64_t end,
                      void* stream, std::uint16_t* d_rows16 = nullptr);
void scatter_add_rows(const std::uint16_t* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t tokens, void* stream);

/// combine_backward over BF16 rows into BF16 row gradients (d_rows[r] = gates[a] * dy[t] rounded,
/// d_gates[a] = dy[t] . rows[r]) token by token: each dy row read once for its topk rows, through
/// `position` (the row of each assignment). Needs 1 to 16 slots, a width of a multiple of 4, dy
/// 16-byte and the BF16 rows 8-byte aligned (combine_backward_by_token_fits).
void combine_backward_by_token(const float* dy, const std::uint16_t* rows, const float* gates,
                               const std::int64_t* position, std::int64_t topk, std::int64_t width,
                               float* d_gates, std::uint16_t* d_rows, std::int64_t tokens,
                               void* stream);
bool combine_backward_by_token_fits(const float* dy, const std::uint16_t* rows,
                                    const std::uint16_t* d_rows, std::int64_t topk,
                                    std::int64_t width, std::int64_t tokens);

}  // namespace troupe::kernels::cuda
