#pragma once

// What the grouped GEMM kernels share (grouped_gemm.cu: FP32 on the CUDA cores;
// grouped_gemm_bf16.cu: BF16 with mma.sync; grouped_gemm_wgmma.cu: BF16 with Hopper's wgmma): the
// arguments of a pass, the row gather, and the tile scheduler that finds a block's expert from the
// offsets on the device. Internal to kernels/cuda.

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/grouped_gemm.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda::grouped {

/// Rows per row tile: a tile never straddles two experts.
constexpr int tile = 64;
/// The BF16 tensor-core kernels' output tile (rows x columns, both kernels) and an expert's rows
/// per Wgrad block.
constexpr int tensor_core_tile = 128;
constexpr int wgrad_chunk = 1024;

enum class pass { fprop, dgrad, wgrad };

struct arguments {
  grouped_rows rows;
  const float* a;  // fprop: x, dgrad: dy, wgrad: dy
  std::int64_t lda;
  const float* b;  // wgrad: x
  std::int64_t ldb;
  weight_tables weights;
  gradient_tables weight_grads;
  float* c;
  std::int64_t ldc;
  std::int64_t n, k;
  bool accumulate;  // Fprop, Dgrad: add into c; Wgrad: false when dW holds zeros (onto_zeros)
  const void* a16 = nullptr;  // a (ld lda) already rounded to BF16 by its producer, or null
  const void* b16 = nullptr;  // wgrad: b (ld ldb) the same
  void* c16 = nullptr;        // fprop, dgrad: the output rounded to BF16 here (ld ldc), not into c
  double* squares = nullptr;  // wgrad on CUTLASS: each gradient's sum of squares (problem order)
};

__device__ inline std::int64_t source_of(const grouped_rows& rows, std::int64_t r) {
  return rows.source != nullptr ? rows.source[r] / rows.divisor : r;
}

/// The expert and first row of row tile `t` (row tiles of `Rows` rows of the experts in order),
/// or -1.
template <int Rows = tile>
__device__ inline void find_tile(const grouped_rows& rows, std::int64_t t, std::int64_t& group,
                                 std::int64_t& first) {
  std::int64_t seen = 0;
  for (std::int64_t g = 0; g < rows.groups; ++g) {
    const std::int64_t count = rows.offsets[g + 1] - rows.offsets[g];
    const std::int64_t tiles = (count + Rows - 1) / Rows;
    if (t < seen + tiles) {
      group = g;
      first = rows.offsets[g] + (t - seen) * Rows;
      return;
    }
    seen += tiles;
  }
  group = -1;
  first = 0;
}

/// A block's output tile: rows [m0, m_end) of expert `group` (rows of dW, the n dimension, for
/// Wgrad), the reduction's length `depth`, and for Wgrad the expert's first token row `r_begin`.
struct block_tile {
  std::int64_t group = 0, m0 = 0, m_end = 0, depth = 0, r_begin = 0;
};

/// This block's tile of `Rows` rows: Wgrad's from the grid (expert, n tile), Fprop's and Dgrad's
/// from the row tile scheduler, thread 0 answering through the __shared__ `shared_group` and
/// `shared_first`. Every thread of the block calls it (it synchronises them); false when the
/// block has no work.
template <pass P, int Rows = tile>
__device__ bool block_tile_of(const arguments& args, std::int64_t& shared_group,
                              std::int64_t& shared_first, block_tile& t) {
  if constexpr (P == pass::wgrad) {
    t.group = blockIdx.z;
    t.m0 = static_cast<std::int64_t>(blockIdx.y) * Rows;
    t.m_end = args.n;
    t.r_begin = args.rows.offsets[t.group];
    t.depth = args.rows.offsets[t.group + 1] - t.r_begin;
    return t.depth > 0;
  } else {
    if (threadIdx.x == 0) find_tile<Rows>(args.rows, blockIdx.y, shared_group, shared_first);
    __syncthreads();
    t.group = shared_group;
    if (t.group < 0) return false;
    t.m0 = shared_first;
    t.m_end = min(t.m0 + Rows, args.rows.offsets[t.group + 1]);
    t.depth = P == pass::fprop ? args.k : args.n;
    return true;
  }
}

/// dW row `row` (of the stacked [n, k] when there are two tables) of expert g.
__device__ inline float* gradient_row(const arguments& args, std::int64_t g, std::int64_t row) {
  if (args.weight_grads.second == nullptr) return args.weight_grads.first[g] + row * args.k;
  const std::int64_t half = args.n / 2;
  return row < half ? args.weight_grads.first[g] + row * args.k
                    : args.weight_grads.second[g] + (row - half) * args.k;
}

/// Whether a tensor-core Wgrad block of expert g (a chunk of wgrad_chunk of its rows) is the only
/// writer of its dW tile and dW holds zeros: then it stores instead of adding.
__device__ inline bool wgrad_stores(const arguments& args, std::int64_t g) {
  return !args.accumulate && args.rows.offsets[g + 1] - args.rows.offsets[g] <= wgrad_chunk;
}

/// Writes the outputs at columns col and col + 1 (when < out_cols) of an output row `out` of pass
/// P: Wgrad adds them into dW atomically (or stores them, `only_writer`: wgrad_stores), Fprop and
/// Dgrad store them (or add, args.accumulate).
template <pass P>
__device__ inline void store_pair(const arguments& args, float* out, std::int64_t col,
                                  std::int64_t out_cols, float2 value, bool only_writer = false) {
  const bool pair = col + 1 < out_cols && reinterpret_cast<std::uintptr_t>(out + col) % 8 == 0;
  if (P == pass::wgrad && only_writer) {
    // NOTES: a store writes whole sectors without reading dW from memory first: half the traffic
    // of the atomic addition (the medium config's gate+up dW is 1.5 GB per layer).
    if (pair) {
      *reinterpret_cast<float2*>(out + col) = value;
    } else {
      out[col] = value.x;
      if (col + 1 < out_cols) out[col + 1] = value.y;
    }
  } else if constexpr (P == pass::wgrad) {
    // NOTES: where dW may hold earlier micro-batches' sums, atomicAdd even where the block is the
    // tile's only writer (an expert of one chunk): a reduction the SMs do not wait for, where `+=`
    // reads dW first (35.5 ms per step against 30.7 ms measured on the H200). sm_90 adds two
    // floats in one atomic.
    if (pair) {
      atomicAdd(reinterpret_cast<float2*>(out + col), value);
    } else {
      atomicAdd(out + col, value.x);
      if (col + 1 < out_cols) atomicAdd(out + col + 1, value.y);
    }
  } else if (pair) {
    float2* to = reinterpret_cast<float2*>(out + col);
    if (args.accumulate) {
      const float2 old = *to;
      *to = float2{old.x + value.x, old.y + value.y};
    } else {
      *to = value;
    }
  } else {
    out[col] = args.accumulate ? out[col] + value.x : value.x;
    if (col + 1 < out_cols) out[col + 1] = args.accumulate ? out[col + 1] + value.y : value.y;
  }
}

/// Writes the outputs at columns col and col + 1 (when < out_cols) of Fprop's or Dgrad's output
/// row `row` rounded to BF16 into args.c16 (the caller's BF16 outputs: never accumulating).
__device__ inline void store_bf16_pair(const arguments& args, std::int64_t row, std::int64_t col,
                                       std::int64_t out_cols, float2 value) {
  __nv_bfloat16* out = static_cast<__nv_bfloat16*>(args.c16) + row * args.ldc + col;
  if (col + 1 < out_cols && reinterpret_cast<std::uintptr_t>(out) % 4 == 0) {
    *reinterpret_cast<__nv_bfloat162*>(out) = __float22bfloat162_rn(value);
  } else {
    out[0] = __float2bfloat16_rn(value.x);
    if (col + 1 < out_cols) out[1] = __float2bfloat16_rn(value.y);
  }
}

/// Row tiles of all experts together are at most ceil(rows / Rows) + groups.
template <int Rows = tile>
inline unsigned row_tiles(const grouped_rows& rows) {
  return blocks_for(rows.rows, Rows) + static_cast<unsigned>(rows.groups);
}

/// The BF16 tensor-core kernels (grouped_gemm_bf16.cu): the operands rounded into `staging`
/// (grouped_staging.cuh's staging_bytes), then the products. Both weight tables are handled there.
void launch_bf16(pass p, const arguments& args, void* stream, void* staging);
/// The weights rounded once into [G * n, padded(k)] BF16, the layout every pass of both kernels
/// reads.
std::size_t rounded_weights_bytes(std::int64_t groups, std::int64_t n, std::int64_t k);
void round_weights(const weight_tables& weights, std::int64_t groups, std::int64_t n,
                   std::int64_t k, void* out, void* stream);

/// The same on Hopper's wgmma (grouped_gemm_wgmma.cu, built for sm_90a), from the same staging
/// layouts (each operand read K-major or MN-major as it lies).
void launch_wgmma(pass p, const arguments& args, void* stream, void* staging);

/// The same on CUTLASS's Hopper grouped GEMM (grouped_gemm_cutlass.cu, built for sm_90a when
/// CUTLASS's headers are found: TROUPE_HAVE_CUTLASS). Its per-expert problem arrays and workspace
/// follow the staged operands in `staging`: cutlass_bytes(groups, n, k) more, after staging_bytes
/// rounded up to 256. cutlass_supports says whether a pass's operands and outputs meet TMA's
/// alignment (the weight gradients' pointers, on the device, are checked as the kernel starts:
/// troupe's allocations are 256-byte aligned). With `squares` set, Wgrad also writes each
/// problem's (expert's, table's) sum of squares of the gradient it stores (squares[g * tables +
/// table]), from its epilogue.
std::size_t cutlass_bytes(std::int64_t groups, std::int64_t n, std::int64_t k);
bool cutlass_supports(pass p, const arguments& args, const void* staging);
void launch_cutlass(pass p, const arguments& args, void* stream, void* staging);

}  // namespace troupe::kernels::cuda::grouped
