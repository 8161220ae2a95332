#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/grouped_staging.cuh"
#include "kernels/cuda/mma.cuh"

namespace troupe::kernels::cuda::grouped {

namespace {

// NOTES: the grouped GEMMs of the "bf16" precision, in two steps. First the operands are rounded
// to BF16 into a staging buffer, the rows of Fprop and Wgrad gathered on the way (row r reads
// token source[r] / divisor) and every row padded with zeros to a multiple of 8 elements: one
// memory-bound pass per operand, after which every 16-byte piece of a slab is either all there or
// all absent. Then the products read only BF16 and stream their slabs with cp.async into four
// shared-memory stages, so three slabs are in flight while the tensor cores multiply the fourth.
// The previous kernel rounded f32 slabs in registers on their way into shared memory: the loads
// of the next slab could only hide behind one slab's products, and it ran at 40-60 TFLOP/s on the
// H200 (the expert GEMMs are a few hundred rows per expert, K = 256 to 1024).
//
// A block of 8 warps owns a 128 x 128 output tile, each warp 64 x 32 of it, with mma.sync
// m16n8k16 (BF16 operands, FP32 accumulation); a slab is stored in the layout its global memory
// is contiguous in and ldmatrix reads either (.trans for the transposed one). Row tiles never
// straddle two experts (grouped_gemm.cuh's scheduler). Wgrad reduces over an expert's tokens,
// whose count the router decides: at a poor balance one expert holds ten times the mean, so its
// tokens are split into chunks of 1024, each block adding its partial dW with atomicAdd (the
// order of the additions, when an expert spans several chunks, is not fixed: a difference in the
// last bits between runs), or storing it where dW holds zeros and the expert has one chunk. This
// is Hopper's Wgrad among troupe's own kernels (grouped_gemm_wgmma.cu is slower there; CUTLASS's
// grouped GEMM, grouped_gemm_cutlass.cu, takes every pass where it was built) and every pass
// elsewhere.
using namespace mma;

constexpr int rows = tensor_core_tile;  // output rows per block (tokens; dW rows for Wgrad)
constexpr int cols = tensor_core_tile;  // output columns per block
constexpr int depth_step = 32;
constexpr int stages = 4;
constexpr int threads = 256;
constexpr int copies = rows * depth_step / 8 / threads;  // 16-byte copies per thread and operand
constexpr int ld_depth = depth_step + 8;                 // [outer][depth] slabs
constexpr int ld_outer = rows + 8;                       // [depth][outer] slabs
constexpr int slab_elements =
    rows * ld_depth > depth_step* ld_outer ? rows* ld_depth : depth_step* ld_outer;
constexpr std::size_t shared_bytes = 2 * stages * slab_elements * sizeof(bf16);
static_assert(rows == cols, "one slab shape serves both operands");

/// Fprop and Dgrad read A along the reduction (token rows); Wgrad reads dy^T along the rows.
template <pass P>
constexpr bool a_along_depth = P != pass::wgrad;
/// Fprop reads W[n, k] along the reduction; Dgrad (W rows) and Wgrad (x rows) along the columns.
template <pass P>
constexpr bool b_along_depth = P == pass::fprop;

// ---- the products ----------------------------------------------------------------------------

/// Where copy `u` of this thread sits in a slab: (outer, depth) of its first element.
template <bool AlongDepth>
__device__ inline void slab_position(int u, int& outer, int& kk) {
  const int l = static_cast<int>(threadIdx.x) + u * threads;
  if (AlongDepth) {
    outer = l / (depth_step / 8);
    kk = l % (depth_step / 8) * 8;
  } else {
    kk = l / (rows / 8);
    outer = l % (rows / 8) * 8;
  }
}

template <bool AlongDepth>
__device__ inline int slab_index(int outer, int kk) {
  return AlongDepth ? outer * ld_depth + kk : kk * ld_outer + outer;
}

/// The tile and what its copies need.
struct tile_work {
  std::int64_t group, m0, m_end, depth, r_begin, n0, out_cols;
  const bf16* b;  // fprop, dgrad: this expert's weights [n, kp]; wgrad: x rows
};

/// Issues this thread's cp.async copies of slab k0 of A and B into one stage.
template <pass P>
__device__ inline void copy_slab(const arguments& args, const staged& o, const tile_work& t,
                                 std::int64_t k0, bf16* as, bf16* bs) {
#pragma unroll
  for (int u = 0; u < copies; ++u) {
    int i, kk;
    slab_position<a_along_depth<P>>(u, i, kk);
    const std::int64_t outer = t.m0 + i, red = k0 + kk;
    bool valid;
    std::int64_t at;
    if constexpr (P == pass::wgrad) {  // dy^T: eight dW rows (n) of one token
      valid = red < t.depth && outer < args.n;
      at = (t.r_begin + red) * o.lda + outer;
    } else {  // eight reduction columns of one token row
      valid = outer < t.m_end && red < t.depth;
      at = outer * o.lda + red;
    }
    copy16(as + slab_index<a_along_depth<P>>(i, kk), o.a + (valid ? at : 0), valid);
  }
#pragma unroll
  for (int u = 0; u < copies; ++u) {
    int j, kk;
    slab_position<b_along_depth<P>>(u, j, kk);
    const std::int64_t red = k0 + kk, col = t.n0 + j;
    bool valid;
    std::int64_t at;
    if constexpr (P == pass::fprop) {  // W[n, k]: eight reduction columns of one weight row
      valid = col < t.out_cols && red < t.depth;
      at = col * o.ldb + red;
    } else if constexpr (P == pass::dgrad) {  // eight output columns of one W row
      valid = red < args.n && col < t.out_cols;
      at = red * o.ldb + col;
    } else {  // eight output columns of one x row
      valid = red < t.depth && col < t.out_cols;
      at = (t.r_begin + red) * o.ldb + col;
    }
    copy16(bs + slab_index<b_along_depth<P>>(j, kk), t.b + (valid ? at : 0), valid);
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
__global__ void __launch_bounds__(threads, 2) grouped_bf16_kernel(arguments args, staged o) {
  extern __shared__ __align__(128) unsigned char shared[];
  bf16* as = reinterpret_cast<bf16*>(shared);  // [stages][slab_elements]
  bf16* bs = as + stages * slab_elements;
  __shared__ std::int64_t tile_group, tile_first;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, wm = warp / 4, wn = warp % 4;

  block_tile bt;
  if constexpr (P == pass::wgrad) {  // (k tile, n tile, chunk of an expert's tokens) from the grid
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
  } else {
    bt.depth = P == pass::fprop ? o.ldb : o.lda;  // the padded reduction
  }
  const tile_work t{bt.group,
                    bt.m0,
                    bt.m_end,
                    bt.depth,
                    bt.r_begin,
                    static_cast<std::int64_t>(blockIdx.x) * cols,
                    P == pass::fprop ? args.n : args.k,
                    P == pass::wgrad ? o.b : o.b + bt.group * args.n * o.ldb};

  float acc[4][4][4];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
      acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;

  // NOTES: one barrier per slab. At slab s every thread has passed the barrier after finishing
  // slab s - 1, so the stage that slab lived in is free for slab s + stages - 1. A group is
  // committed every step, empty past the end, so wait_copies<stages - 2> always means "slab s
  // has landed".
  const std::int64_t slabs = (t.depth + depth_step - 1) / depth_step;
#pragma unroll
  for (int s = 0; s < stages - 1; ++s) {
    if (s < slabs)
      copy_slab<P>(args, o, t, s * depth_step, as + s * slab_elements, bs + s * slab_elements);
    commit_copies();
  }
  for (std::int64_t s = 0; s < slabs; ++s) {
    wait_copies<stages - 2>();
    __syncthreads();
    const std::int64_t next = s + stages - 1;
    if (next < slabs) {
      const int stage = static_cast<int>(next % stages);
      copy_slab<P>(args, o, t, next * depth_step, as + stage * slab_elements,
                   bs + stage * slab_elements);
    }
    commit_copies();
    const int stage = static_cast<int>(s % stages);
    multiply_slab<P>(acc, as + stage * slab_elements, bs + stage * slab_elements, wm, wn);
  }

  const bool only_writer = P == pass::wgrad && wgrad_stores(args, t.group);
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const std::int64_t row = t.m0 + wm * 64 + mt * 16 + lane / 4 + half * 8;
      if (row >= t.m_end) continue;
      float* out = P == pass::wgrad      ? gradient_row(args, t.group, row)
                   : args.c16 != nullptr ? nullptr
                                         : args.c + row * args.ldc;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const std::int64_t col = t.n0 + wn * 32 + nt * 8 + lane % 4 * 2;
        if (col >= t.out_cols) continue;
        const float2 value{acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]};
        if (P != pass::wgrad && args.c16 != nullptr)
          store_bf16_pair(args, row, col, t.out_cols, value);
        else
          store_pair<P>(args, out, col, t.out_cols, value, only_writer);
      }
    }
}

template <pass P>
void launch_products(const arguments& args, const staged& o, dim3 grid, cudaStream_t stream) {
  allow_shared_memory(grouped_bf16_kernel<P>, shared_bytes);
  grouped_bf16_kernel<P><<<grid, threads, shared_bytes, stream>>>(args, o);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace

std::size_t rounded_weights_bytes(std::int64_t groups, std::int64_t n, std::int64_t k) {
  return static_cast<std::size_t>(groups * n * padded(k)) * sizeof(bf16);
}

void round_weights(const weight_tables& weights, std::int64_t groups, std::int64_t n,
                   std::int64_t k, void* out, void* stream) {
  round_rows(weight_rows{weights, n, k}, groups * n, k, padded(k), static_cast<bf16*>(out),
             as_stream(stream));
}

void launch_bf16(pass p, const arguments& args, void* stream, void* staging) {
  const cudaStream_t s = as_stream(stream);
  const staged o = stage_operands(p, args, staging, s, "grouped_gemm (bf16)");
  const dim3 grid = product_grid(p, args);
  for_pass(p, [&](auto P) { launch_products<decltype(P)::value>(args, o, grid, s); });
}

}  // namespace troupe::kernels::cuda::grouped
