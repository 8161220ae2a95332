#include <cuda_bf16.h>
#include <mma.h>

#include <type_traits>

#include "kernels/cuda/grouped_gemm.cuh"

namespace troupe::kernels::cuda::grouped {

namespace {

// NOTES: the grouped GEMMs of the "bf16" precision. The operands stay f32 in memory (FP32
// storage, as the rest of the model); each 64 x 64 slab is rounded to BF16 on its way into shared
// memory and multiplied on the tensor cores through WMMA (16 x 16 x 16, FP32 accumulation), four
// warps each owning a 32 x 32 quarter of the 64 x 64 output tile; 64-deep slabs, read four floats
// at a time. The slab is stored in the
// layout its global memory is contiguous in (row- or column-major per operand and pass), so the
// loads coalesce and the stores to shared memory do not conflict; WMMA reads either layout. The
// scheduler is the FP32 kernel's (grouped_gemm.cuh): row tiles never straddle two experts.
// Plain WMMA (no wgmma/TMA): the experts' GEMMs are small (a few hundred rows each), and this
// keeps one kernel for the three passes.
using namespace nvcuda;

constexpr int depth_step = 64;
constexpr int threads = 128;
constexpr int pad = 8;  // bf16 elements: keeps WMMA's 16-byte leading dimensions, spreads banks
constexpr int out_ld = tile + 4;

/// Fprop and Dgrad read A along the reduction (token rows); Wgrad reads dy^T along the rows.
template <pass P>
constexpr bool a_along_depth = P != pass::wgrad;
/// Fprop reads W[n, k] along the reduction; Dgrad (W rows) and Wgrad (x rows) along the columns.
template <pass P>
constexpr bool b_along_depth = P == pass::fprop;

template <bool AlongDepth>
using a_layout = std::conditional_t<AlongDepth, wmma::row_major, wmma::col_major>;
template <bool AlongDepth>
using b_layout = std::conditional_t<AlongDepth, wmma::col_major, wmma::row_major>;

/// Index of element (outer, kk) of a slab stored contiguous along depth ([outer][depth]) or
/// along outer ([depth][outer]), and its leading dimension.
template <bool AlongDepth>
__device__ constexpr int slab_index(int outer, int kk) {
  return AlongDepth ? outer * (depth_step + pad) + kk : kk * (tile + pad) + outer;
}
template <bool AlongDepth>
constexpr int slab_ld = AlongDepth ? depth_step + pad : tile + pad;

/// Four consecutive floats from `from`, the first `valid` of them (the rest read as zeros): one
/// 16-byte load when all four are there and aligned.
__device__ inline float4 load4(const float* from, std::int64_t valid) {
  if (valid >= 4 && reinterpret_cast<std::uintptr_t>(from) % 16 == 0)
    return *reinterpret_cast<const float4*>(from);
  float4 v{0.0f, 0.0f, 0.0f, 0.0f};
  if (valid > 0) v.x = from[0];
  if (valid > 1) v.y = from[1];
  if (valid > 2) v.z = from[2];
  if (valid > 3) v.w = from[3];
  return v;
}

/// Four BF16 roundings, stored as one 8-byte word (slab offsets of 4 elements are 8-aligned).
__device__ inline void store4(__nv_bfloat16* to, float4 v) {
  const __nv_bfloat162 low = __floats2bfloat162_rn(v.x, v.y),
                       high = __floats2bfloat162_rn(v.z, v.w);
  uint2 packed;
  packed.x = *reinterpret_cast<const unsigned*>(&low);
  packed.y = *reinterpret_cast<const unsigned*>(&high);
  *reinterpret_cast<uint2*>(to) = packed;
}

template <pass P>
__global__ void __launch_bounds__(threads) grouped_bf16_kernel(arguments args) {
  constexpr bool a_depth = a_along_depth<P>, b_depth = b_along_depth<P>;
  __shared__ __align__(32) __nv_bfloat16 as[tile * (depth_step + pad)];
  __shared__ __align__(32) __nv_bfloat16 bs[tile * (depth_step + pad)];
  __shared__ __align__(32) float cs[tile * out_ld];
  __shared__ std::int64_t source_rows[tile];  // fprop: x rows of the tile; wgrad: of the slab
  __shared__ std::int64_t tile_group, tile_first;
  const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;

  block_tile t;
  if (!block_tile_of<P>(args, tile_group, tile_first, t)) return;
  const std::int64_t group = t.group, m0 = t.m0, m_end = t.m_end, depth = t.depth,
                     r_begin = t.r_begin;
  const std::int64_t n0 = static_cast<std::int64_t>(blockIdx.x) * tile;
  if constexpr (P == pass::fprop)
    for (int i = tid; i < tile; i += threads)
      source_rows[i] = m0 + i < m_end ? source_of(args.rows, m0 + i) : 0;
  const std::int64_t out_cols = P == pass::fprop ? args.n : args.k;
  const float* w = P == pass::wgrad ? nullptr : args.weights[group];

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int u = 0; u < 2; ++u)
#pragma unroll
    for (int v = 0; v < 2; ++v) wmma::fill_fragment(acc[u][v], 0.0f);

  for (std::int64_t k0 = 0; k0 < depth; k0 += depth_step) {
    if constexpr (P == pass::wgrad) {
      __syncthreads();  // the last slab's source rows are read
      for (int kk = tid; kk < depth_step; kk += threads)
        source_rows[kk] = k0 + kk < depth ? source_of(args.rows, r_begin + k0 + kk) : 0;
    }
    __syncthreads();
    // A slab: A(m0 + i, k0 + kk) for i < 64, kk < 64, four consecutive elements (along the
    // operand's contiguous dimension) per load.
    for (int l = tid; l < tile * depth_step / 4; l += threads) {
      const int i = a_depth ? l / (depth_step / 4) : l % (tile / 4) * 4;
      const int kk = a_depth ? l % (depth_step / 4) * 4 : l / (tile / 4);
      const std::int64_t row = m0 + i, red = k0 + kk;
      const float* from = nullptr;
      std::int64_t valid = 0;
      if constexpr (P == pass::wgrad) {  // dy^T: four rows of dW, one token
        from = args.a + (r_begin + red) * args.lda + row;
        valid = red < depth ? m_end - row : 0;
      } else {  // four reduction columns of one token row
        from = args.a + (P == pass::fprop ? source_rows[i] : row) * args.lda + red;
        valid = row < m_end ? depth - red : 0;
      }
      store4(as + slab_index<a_depth>(i, kk), load4(from, valid));
    }
    // B slab: B(k0 + kk, n0 + j) for kk < 64, j < 64.
    for (int l = tid; l < tile * depth_step / 4; l += threads) {
      const int j = b_depth ? l / (depth_step / 4) : l % (tile / 4) * 4;
      const int kk = b_depth ? l % (depth_step / 4) * 4 : l / (tile / 4);
      const std::int64_t red = k0 + kk, col = n0 + j;
      const float* from = nullptr;
      std::int64_t valid = 0;
      if constexpr (P == pass::fprop) {  // W[n, k]: four reduction columns of one weight row
        from = w + col * args.k + red;
        valid = col < out_cols ? depth - red : 0;
      } else {  // four output columns of one W row (dgrad) or x row (wgrad)
        from =
            P == pass::dgrad ? w + red * args.k + col : args.b + source_rows[kk] * args.ldb + col;
        valid = red < depth ? out_cols - col : 0;
      }
      store4(bs + slab_index<b_depth>(j, kk), load4(from, valid));
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < depth_step; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, a_layout<a_depth>> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, b_layout<b_depth>> b[2];
#pragma unroll
      for (int u = 0; u < 2; ++u)
        wmma::load_matrix_sync(a[u], as + slab_index<a_depth>(wm * 32 + u * 16, kk),
                               slab_ld<a_depth>);
#pragma unroll
      for (int v = 0; v < 2; ++v)
        wmma::load_matrix_sync(b[v], bs + slab_index<b_depth>(wn * 32 + v * 16, kk),
                               slab_ld<b_depth>);
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int v = 0; v < 2; ++v) wmma::mma_sync(acc[u][v], a[u], b[v], acc[u][v]);
    }
  }
#pragma unroll
  for (int u = 0; u < 2; ++u)
#pragma unroll
    for (int v = 0; v < 2; ++v)
      wmma::store_matrix_sync(cs + (wm * 32 + u * 16) * out_ld + wn * 32 + v * 16, acc[u][v],
                              out_ld, wmma::mem_row_major);
  __syncthreads();
  for (int l = tid; l < tile * tile; l += threads) {
    const int i = l / tile, j = l % tile;
    const std::int64_t row = m0 + i, col = n0 + j;
    if (row >= m_end || col >= out_cols) continue;
    const float value = cs[i * out_ld + j];
    if constexpr (P == pass::wgrad) {
      args.weight_grads[group][row * args.k + col] += value;
    } else {
      float* out = args.c + row * args.ldc + col;
      *out = args.accumulate ? *out + value : value;
    }
  }
}

}  // namespace

void launch_bf16(pass p, const arguments& args, void* stream) {
  const cudaStream_t s = as_stream(stream);
  switch (p) {
    case pass::fprop:
      grouped_bf16_kernel<pass::fprop>
          <<<dim3(blocks_for(args.n, tile), row_tiles(args.rows)), threads, 0, s>>>(args);
      break;
    case pass::dgrad:
      grouped_bf16_kernel<pass::dgrad>
          <<<dim3(blocks_for(args.k, tile), row_tiles(args.rows)), threads, 0, s>>>(args);
      break;
    case pass::wgrad:
      grouped_bf16_kernel<pass::wgrad><<<dim3(blocks_for(args.k, tile), blocks_for(args.n, tile),
                                              static_cast<unsigned>(args.rows.groups)),
                                         threads, 0, s>>>(args);
      break;
  }
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda::grouped
