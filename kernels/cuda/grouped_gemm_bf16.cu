#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/mma.cuh"

namespace troupe::kernels::cuda::grouped {

namespace {

// NOTES: the grouped GEMMs of the "bf16" precision. The operands stay f32 in memory (FP32
// storage, as the rest of the model); each slab is rounded to BF16 on its way into shared memory
// and multiplied on the tensor cores with mma.sync (m16n8k16, FP32 accumulation). A block of 8
// warps owns a 128 x 128 output tile, each warp 64 x 32 of it; 32-deep slabs, double-buffered:
// the next slab's global loads are issued before the current one is multiplied and land in the
// other buffer after it, so one barrier per slab separates them. A slab is stored in the layout
// its global memory is contiguous in (so the loads coalesce four floats at a time), and ldmatrix
// reads either layout (.trans for the transposed one). The scheduler is the FP32 kernel's
// (grouped_gemm.cuh) with 128-row tiles: a row tile never straddles two experts. Wgrad reduces
// over an expert's tokens, whose count the router decides: at a poor balance one expert holds
// ten times the mean, and a block per (expert, tile) left most SMs idle behind it. Its tokens
// are split into chunks of 1024 found by the same scheduler, each block adding its partial dW
// with atomicAdd (the order of the additions, when an expert spans several chunks, is not
// fixed: a difference in the last bits between runs). No wgmma/TMA:
// the f32 -> BF16 rounding passes through registers anyway, and the experts' GEMMs are a few
// hundred rows each.
using namespace mma;

constexpr int rows = 128;  // output rows per block (tokens; dW rows for Wgrad)
constexpr int cols = 128;  // output columns per block
constexpr int depth_step = 32;
constexpr int threads = 256;
constexpr int loads = rows * depth_step / 4 / threads;  // float4 per thread per operand
constexpr int ld_depth = depth_step + 8;                // [outer][depth] slabs
constexpr int ld_outer = rows + 8;                      // [depth][outer] slabs
constexpr int slab_elements =
    rows * ld_depth > depth_step* ld_outer ? rows* ld_depth : depth_step* ld_outer;
static_assert(rows == cols, "one slab shape serves both operands");
constexpr int wgrad_chunk = 1024;  // an expert's tokens per Wgrad block

/// Fprop and Dgrad read A along the reduction (token rows); Wgrad reads dy^T along the rows.
template <pass P>
constexpr bool a_along_depth = P != pass::wgrad;
/// Fprop reads W[n, k] along the reduction; Dgrad (W rows) and Wgrad (x rows) along the columns.
template <pass P>
constexpr bool b_along_depth = P == pass::fprop;

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

/// Where load `u` of this thread sits in a slab: (outer, depth) of its first element.
template <bool AlongDepth>
__device__ inline void slab_position(int u, int& outer, int& kk) {
  const int l = static_cast<int>(threadIdx.x) + u * threads;
  if (AlongDepth) {
    outer = l / (depth_step / 4);
    kk = l % (depth_step / 4) * 4;
  } else {
    kk = l / (rows / 4);
    outer = l % (rows / 4) * 4;
  }
}

template <bool AlongDepth>
__device__ inline int slab_index(int outer, int kk) {
  return AlongDepth ? outer * ld_depth + kk : kk * ld_outer + outer;
}

/// The tile and what its loads need.
struct tile_work {
  std::int64_t group, m0, m_end, depth, r_begin, n0, out_cols;
  const float* w;
  const std::int64_t* source_rows;  // fprop: x rows of the tile (shared memory)
};

/// This thread's share of slab k0 of A and B, into registers.
template <pass P>
__device__ inline void load_slab(const arguments& args, const tile_work& t, std::int64_t k0,
                                 float4 (&a)[loads], float4 (&b)[loads]) {
#pragma unroll
  for (int u = 0; u < loads; ++u) {
    int i, kk;
    slab_position<a_along_depth<P>>(u, i, kk);
    const std::int64_t row = t.m0 + i, red = k0 + kk;
    if constexpr (P == pass::wgrad) {  // dy^T: four rows of dW, one token
      a[u] = load4(args.a + (t.r_begin + red) * args.lda + row, red < t.depth ? t.m_end - row : 0);
    } else {  // four reduction columns of one token row
      const std::int64_t source = P == pass::fprop ? t.source_rows[i] : row;
      a[u] = load4(args.a + source * args.lda + red, row < t.m_end ? t.depth - red : 0);
    }
  }
#pragma unroll
  for (int u = 0; u < loads; ++u) {
    int j, kk;
    slab_position<b_along_depth<P>>(u, j, kk);
    const std::int64_t red = k0 + kk, col = t.n0 + j;
    if constexpr (P == pass::fprop) {  // W[n, k]: four reduction columns of one weight row
      b[u] = load4(t.w + col * args.k + red, col < t.out_cols ? t.depth - red : 0);
    } else if constexpr (P == pass::dgrad) {  // four output columns of one W row
      b[u] = load4(t.w + red * args.k + col, red < t.depth ? t.out_cols - col : 0);
    } else {  // four output columns of one x row
      const std::int64_t source = red < t.depth ? source_of(args.rows, t.r_begin + red) : 0;
      b[u] = load4(args.b + source * args.ldb + col, red < t.depth ? t.out_cols - col : 0);
    }
  }
}

/// The registers of load_slab, rounded to BF16, into a shared-memory slab pair.
template <pass P>
__device__ inline void store_slab(bf16* as, bf16* bs, const float4 (&a)[loads],
                                  const float4 (&b)[loads]) {
#pragma unroll
  for (int u = 0; u < loads; ++u) {
    int outer, kk;
    slab_position<a_along_depth<P>>(u, outer, kk);
    store4(as + slab_index<a_along_depth<P>>(outer, kk), a[u]);
    slab_position<b_along_depth<P>>(u, outer, kk);
    store4(bs + slab_index<b_along_depth<P>>(outer, kk), b[u]);
  }
}

/// acc += the warp's 64 x 32 share of slab A B.
template <pass P>
__device__ inline void multiply_slab(float (&acc)[4][4][4], const bf16* as, const bf16* bs, int wm,
                                     int wn) {
#pragma unroll
  for (int kk = 0; kk < depth_step; kk += 16) {
    unsigned a[4][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
      if constexpr (a_along_depth<P>)
        load_a(a[mt], as, ld_depth, wm * 64 + mt * 16, kk);
      else
        load_a_transposed(a[mt], as, ld_outer, wm * 64 + mt * 16, kk);
    }
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      unsigned b[4];
      if constexpr (b_along_depth<P>)
        load_b_rows(b, bs, ld_depth, wn * 32 + np * 16, kk);
      else
        load_b_columns(b, bs, ld_outer, kk, wn * 32 + np * 16);
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        mma::mma(acc[mt][2 * np], a[mt], b[0], b[1]);
        mma::mma(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
}

template <pass P>
__global__ void __launch_bounds__(threads) grouped_bf16_kernel(arguments args) {
  __shared__ __align__(128) bf16 as[2][slab_elements];
  __shared__ __align__(128) bf16 bs[2][slab_elements];
  __shared__ std::int64_t source_rows[rows];  // fprop: x rows of the tile
  __shared__ std::int64_t tile_group, tile_first;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wm = warp / 4, wn = warp % 4;

  block_tile bt;
  if constexpr (P == pass::wgrad) {  // (n tile, chunk of an expert's tokens) from the grid
    if (tid == 0) find_tile<wgrad_chunk>(args.rows, blockIdx.z, tile_group, tile_first);
    __syncthreads();
    if (tile_group < 0) return;
    bt.group = tile_group;
    bt.m0 = static_cast<std::int64_t>(blockIdx.y) * rows;
    bt.m_end = args.n;
    bt.r_begin = tile_first;
    bt.depth =
        min(static_cast<std::int64_t>(wgrad_chunk), args.rows.offsets[tile_group + 1] - tile_first);
  } else if (!block_tile_of<P, rows>(args, tile_group, tile_first, bt)) {
    return;
  }
  tile_work t{bt.group,
              bt.m0,
              bt.m_end,
              bt.depth,
              bt.r_begin,
              static_cast<std::int64_t>(blockIdx.x) * cols,
              P == pass::fprop ? args.n : args.k,
              P == pass::wgrad ? nullptr : args.weights[bt.group],
              source_rows};
  if constexpr (P == pass::fprop) {
    for (int i = tid; i < rows; i += threads)
      source_rows[i] = t.m0 + i < t.m_end ? source_of(args.rows, t.m0 + i) : 0;
    __syncthreads();
  }

  float acc[4][4][4];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
      acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;

  float4 a[loads], b[loads];
  load_slab<P>(args, t, 0, a, b);
  store_slab<P>(as[0], bs[0], a, b);
  __syncthreads();
  int current = 0;
  for (std::int64_t k0 = 0; k0 < t.depth; k0 += depth_step) {
    const bool more = k0 + depth_step < t.depth;
    if (more) load_slab<P>(args, t, k0 + depth_step, a, b);  // in flight during the products
    multiply_slab<P>(acc, as[current], bs[current], wm, wn);
    if (more) store_slab<P>(as[current ^ 1], bs[current ^ 1], a, b);
    __syncthreads();
    current ^= 1;
  }

#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const std::int64_t row = t.m0 + wm * 64 + mt * 16 + lane / 4 + e / 2 * 8;
        const std::int64_t col = t.n0 + wn * 32 + nt * 8 + lane % 4 * 2 + e % 2;
        if (row >= t.m_end || col >= t.out_cols) continue;
        const float value = acc[mt][nt][e];
        if constexpr (P == pass::wgrad) {
          // NOTES: atomicAdd even where this block is the tile's only writer (an expert of one
          // chunk): a reduction the SMs do not wait for, where `+=` reads dW first (35.5 ms
          // per step against 30.7 ms measured on the H200).
          atomicAdd(&args.weight_grads[t.group][row * args.k + col], value);
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
          <<<dim3(blocks_for(args.n, cols), row_tiles<rows>(args.rows)), threads, 0, s>>>(args);
      break;
    case pass::dgrad:
      grouped_bf16_kernel<pass::dgrad>
          <<<dim3(blocks_for(args.k, cols), row_tiles<rows>(args.rows)), threads, 0, s>>>(args);
      break;
    case pass::wgrad:
      grouped_bf16_kernel<pass::wgrad><<<dim3(blocks_for(args.k, cols), blocks_for(args.n, rows),
                                              row_tiles<wgrad_chunk>(args.rows)),
                                         threads, 0, s>>>(args);
      break;
  }
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda::grouped
