#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/grouped_staging.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace troupe::kernels::cuda::grouped {

namespace {

// NOTES: the grouped GEMMs of the "bf16" precision on Hopper's warpgroup products (wgmma). As the
// mma.sync kernels (grouped_gemm_bf16.cu), the operands are first rounded to BF16 into a staging
// buffer, in the same row-major layouts; each operand then lands in shared memory in the layout
// its global memory is contiguous in, K-major (the reduction contiguous) or MN-major (wgmma's
// transpose flag, which BF16 allows):
//   Fprop  A = x rows gathered [R, kp], K-major     B = W [G * n, kp], K-major
//   Dgrad  A = dy [R, np], K-major                   B = W [G * n, kp], MN-major
//   Wgrad  A = dy [R, np], MN-major (dW rows)        B = x rows gathered [R, kp], MN-major
// so no pass needs a transposed copy of an operand. (Until the fourteenth session Dgrad read a
// transposed BF16 copy of the weights, made once per optimizer step: 12 GiB on the medium config,
// and 0.65 ms per layer and step to make, for a Dgrad 6% faster than the MN-major one.)
//
// A block of two warpgroups owns a 128 x 128 output tile, each warpgroup 64 x 128 of it
// (m64n128k16, 64 accumulators per thread). Slabs of 64 along the reduction (16 KB per operand)
// stream through three shared-memory stages with cp.async, two slabs in flight while the third is
// multiplied; 96 KB per block, so two blocks share a multiprocessor and one's products hide the
// other's waits and epilogue. Tiles, the Wgrad chunks and the atomics are the mma.sync kernels'
// (grouped_gemm.cuh's scheduler).
using mma::bf16;

constexpr int rows = tensor_core_tile;  // output rows per block
constexpr int cols = tensor_core_tile;  // output columns per block
constexpr int depth_step = 64;
constexpr int stages = 3;
constexpr int threads = 256;
constexpr int tile_bytes = rows * depth_step * 2;  // one operand's slab
constexpr int copies = rows * depth_step / 8 / threads;
constexpr std::size_t shared_bytes = 2 * stages * tile_bytes + wgmma::period_bytes;
static_assert(rows == cols && tile_bytes % wgmma::period_bytes == 0);
// An MN-major slab: 64-wide atoms along the 128 rows (or columns), 1024 bytes apart; groups of 8
// depths (two atoms each) 2048 bytes apart.
constexpr std::uint32_t mn_atom_bytes = wgmma::period_bytes;
constexpr std::uint32_t k_group_bytes = rows / 64 * mn_atom_bytes;

// ---- the products ----------------------------------------------------------------------------

/// The tile and what its copies need: output rows [m0, m_end), columns [n0, out_cols), the
/// reduction [0, depth) (Wgrad: token rows r_begin + [0, depth) of the staged operands), and B's
/// first row.
struct tile_work {
  std::int64_t group, m0, m_end, depth, r_begin, n0, out_cols;
  const bf16* b;
};

/// Issues this thread's cp.async copies of a K-major slab: rows outer0 + [0, 128) (those below
/// outer_limit) of `base`, reduction columns k0 + [0, 64) (those below depth).
__device__ inline void copy_k_major(unsigned char* to, const bf16* base, std::int64_t ld,
                                    std::int64_t outer0, std::int64_t outer_limit, std::int64_t k0,
                                    std::int64_t depth) {
#pragma unroll
  for (int u = 0; u < copies; ++u) {
    const int l = static_cast<int>(threadIdx.x) + u * threads, i = l / 8, piece = l % 8;
    const std::int64_t red = k0 + piece * 8, outer = outer0 + i;
    const bool valid = red < depth && outer < outer_limit;
    mma::copy16(reinterpret_cast<bf16*>(to + wgmma::swizzled(i, piece)),
                base + (valid ? outer * ld + red : 0), valid);
  }
}

/// Byte offset of the 16-byte piece q (of 16: columns 8q..8q+7) of depth d in an MN-major slab.
__device__ inline std::uint32_t mn_major_offset(int d, int q) {
  return static_cast<std::uint32_t>(d / 8) * k_group_bytes +
         static_cast<std::uint32_t>(q / 8) * mn_atom_bytes + wgmma::swizzled(d % 8, q % 8);
}

/// Issues this thread's cp.async copies of an MN-major slab: rows row0 + k0 + [0, 64) of `base`
/// (those with k0 + d below depth), 128 contiguous elements from column outer0 (pieces starting
/// below outer_limit; rows are padded to 8, so a piece that starts inside ends inside).
__device__ inline void copy_mn_major(unsigned char* to, const bf16* base, std::int64_t ld,
                                     std::int64_t row0, std::int64_t k0, std::int64_t depth,
                                     std::int64_t outer0, std::int64_t outer_limit) {
#pragma unroll
  for (int u = 0; u < copies; ++u) {
    const int l = static_cast<int>(threadIdx.x) + u * threads, d = l / 16, q = l % 16;
    const std::int64_t red = k0 + d, outer = outer0 + q * 8;
    const bool valid = red < depth && outer < outer_limit;
    mma::copy16(reinterpret_cast<bf16*>(to + mn_major_offset(d, q)),
                base + (valid ? (row0 + red) * ld + outer : 0), valid);
  }
}

/// Which operands of pass P are MN-major.
template <pass P>
constexpr bool a_mn_major = P == pass::wgrad;
template <pass P>
constexpr bool b_mn_major = P != pass::fprop;

/// Issues this thread's copies of slab k0 of A and B into one stage.
template <pass P>
__device__ inline void copy_slab(const arguments& args, const staged& o, const tile_work& t,
                                 std::int64_t k0, unsigned char* as, unsigned char* bs) {
  if constexpr (P == pass::wgrad) {  // dy rows of the chunk, dW rows m0..; x rows, dW columns n0..
    copy_mn_major(as, o.a, o.lda, t.r_begin, k0, t.depth, t.m0, args.n);
    copy_mn_major(bs, o.b, o.ldb, t.r_begin, k0, t.depth, t.n0, args.k);
  } else {
    copy_k_major(as, o.a, o.lda, t.m0, t.m_end, k0, t.depth);
    // Dgrad reads W [n, kp] MN-major: its rows are the reduction, its columns the output.
    if constexpr (b_mn_major<P>)
      copy_mn_major(bs, t.b, o.ldb, 0, k0, args.n, t.n0, t.out_cols);
    else
      copy_k_major(bs, t.b, o.ldb, t.n0, t.out_cols, k0, t.depth);
  }
}

/// The descriptor of step kk (16 deep) of a slab at `base`, in the operand's layout.
template <bool MnMajor>
__device__ inline std::uint64_t step_descriptor(std::uint32_t base, int kk) {
  if constexpr (MnMajor)
    return wgmma::descriptor_mn_major(base + static_cast<std::uint32_t>(kk) * 2 * k_group_bytes,
                                      mn_atom_bytes, k_group_bytes);
  else
    return wgmma::descriptor(base + static_cast<std::uint32_t>(kk) * 32);
}

template <pass P>
__global__ void __launch_bounds__(threads, 2) grouped_wgmma_kernel(arguments args, staged o) {
  extern __shared__ unsigned char shared_raw[];
  // NOTES: the swizzle is a function of address bits 7-9, so every stage starts on a 1024-byte
  // boundary; the dynamic allocation has a period to spare for this rounding.
  unsigned char* shared = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<std::uintptr_t>(shared_raw) + wgmma::period_bytes - 1) /
      wgmma::period_bytes * wgmma::period_bytes);
  unsigned char* as = shared;  // [stages][tile_bytes]
  unsigned char* bs = shared + stages * tile_bytes;
  __shared__ std::int64_t tile_group, tile_first;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, group_of_warps = warp / 4;

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
  const std::int64_t out_cols = P == pass::fprop ? args.n : args.k;
  const bf16* b = o.b;  // Fprop and Dgrad: this expert's weights
  if constexpr (P != pass::wgrad) b += bt.group * args.n * o.ldb;
  const tile_work t{bt.group, bt.m0,      bt.m_end,
                    bt.depth, bt.r_begin, static_cast<std::int64_t>(blockIdx.x) * cols,
                    out_cols, b};

  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  // NOTES: two slabs in flight. At slab s, after the barrier, every warpgroup has waited for its
  // products on slab s - 1, so that slab's stage takes slab s + 2. A copy group is committed every
  // step, empty past the end, so wait_copies<1> always means "slab s has landed".
  const std::int64_t slabs = (t.depth + depth_step - 1) / depth_step;
#pragma unroll
  for (int s = 0; s < stages - 1; ++s) {
    if (s < slabs)
      copy_slab<P>(args, o, t, s * depth_step, as + s * tile_bytes, bs + s * tile_bytes);
    mma::commit_copies();
  }
  // This warpgroup's 64 rows of A: 64 lines further K-major, one atom further MN-major.
  const std::uint32_t a_base =
      mma::shared_address(as) + static_cast<std::uint32_t>(group_of_warps) *
                                    (a_mn_major<P> ? mn_atom_bytes : 64 * wgmma::line_bytes);
  const std::uint32_t b_base = mma::shared_address(bs);
  for (std::int64_t s = 0; s < slabs; ++s) {
    mma::wait_copies<stages - 2>();
    wgmma::fence_shared_for_async();
    __syncthreads();
    const std::int64_t next = s + stages - 1;
    if (next < slabs) {
      const int stage = static_cast<int>(next % stages);
      copy_slab<P>(args, o, t, next * depth_step, as + stage * tile_bytes, bs + stage * tile_bytes);
    }
    mma::commit_copies();
    const std::uint32_t stage_offset = static_cast<std::uint32_t>(s % stages) * tile_bytes;
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::hold(acc[i]);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < depth_step / 16; ++kk)
      wgmma::m64n128k16<a_mn_major<P>, b_mn_major<P>>(
          acc, step_descriptor<a_mn_major<P>>(a_base + stage_offset, kk),
          step_descriptor<b_mn_major<P>>(b_base + stage_offset, kk));
    wgmma::commit();
    wgmma::wait<0>();
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::hold(acc[i]);
  }

  const int w4 = warp % 4;
  const bool only_writer = P == pass::wgrad && wgrad_stores(args, t.group);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const std::int64_t row = t.m0 + group_of_warps * 64 + w4 * 16 + lane / 4 + half * 8;
    if (row >= t.m_end) continue;
    float* out = P == pass::wgrad      ? gradient_row(args, t.group, row)
                 : args.c16 != nullptr ? nullptr
                                       : args.c + row * args.ldc;
#pragma unroll
    for (int j = 0; j < cols / 8; ++j) {
      const std::int64_t col = t.n0 + j * 8 + lane % 4 * 2;
      if (col >= t.out_cols) continue;
      const float2 value{acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]};
      if (P != pass::wgrad && args.c16 != nullptr)
        store_bf16_pair(args, row, col, t.out_cols, value);
      else
        store_pair<P>(args, out, col, t.out_cols, value, only_writer);
    }
  }
}

template <pass P>
void launch_products(const arguments& args, const staged& o, dim3 grid, cudaStream_t stream) {
  allow_shared_memory(grouped_wgmma_kernel<P>, shared_bytes);
  grouped_wgmma_kernel<P><<<grid, threads, shared_bytes, stream>>>(args, o);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace

void launch_wgmma(pass p, const arguments& args, void* stream, void* staging) {
  const cudaStream_t s = as_stream(stream);
  const staged o = stage_operands(p, args, staging, s, "grouped_gemm (wgmma)");
  const dim3 grid = product_grid(p, args);
  for_pass(p, [&](auto P) { launch_products<decltype(P)::value>(args, o, grid, s); });
}

}  // namespace troupe::kernels::cuda::grouped
