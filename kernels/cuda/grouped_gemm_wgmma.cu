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
// buffer; here every operand is staged K-major (the reduction contiguous), because wgmma reads
// that layout with one descriptor form for A and B alike:
//   Fprop  A = x rows gathered [R, kp]          B = W [G * n, kp]
//   Dgrad  A = dy [R, np]                       B = W^T per expert [G * k, np]
//   Wgrad  A = dy^T [n, Rp]                     B = x^T (gathered) [k, Rp]
// Wgrad's transposed token dimension gives each expert a segment starting at a multiple of 8
// (16 bytes) and padded with zeros to one, so a 16-byte piece never mixes two experts' tokens.
//
// A block of two warpgroups owns a 128 x 128 output tile, each warpgroup 64 x 128 of it
// (m64n128k16, 64 accumulators per thread). Slabs of 64 along the reduction (one 128-byte
// swizzled line per row) stream through three shared-memory stages with cp.async, two slabs in
// flight while the third is multiplied; 96 KB per block, so two blocks share a multiprocessor and
// one's products hide the other's waits and epilogue. Tiles, the Wgrad chunks and the atomics are
// the mma.sync kernels' (grouped_gemm.cuh's scheduler).
using mma::bf16;

constexpr int rows = 128;  // output rows per block
constexpr int cols = 128;  // output columns per block
constexpr int depth_step = 64;
constexpr int stages = 3;
constexpr int threads = 256;
constexpr int tile_bytes = rows * depth_step * 2;  // one operand's slab
constexpr int copies = rows * depth_step / 8 / threads;
constexpr std::size_t shared_bytes = 2 * stages * tile_bytes + wgmma::period_bytes;
constexpr int wgrad_chunk = 1024;
static_assert(rows == cols && tile_bytes % wgmma::period_bytes == 0);

/// The most columns Wgrad's transposed token dimension can need: every expert padded by up to 7.
std::int64_t padded_tokens(const grouped_rows& rows) {
  return padded(rows.rows + 7 * rows.groups);
}

/// Elements (BF16) that hold the padded segment starts, (groups + 1) int64, 16-byte aligned.
std::int64_t segment_table_elements(std::int64_t groups) {
  return padded((groups + 1) * 4);
}

/// The K-major operands in the staging buffer; `segments` (Wgrad) the experts' padded starts.
struct staged {
  const bf16* a;
  std::int64_t lda;
  const bf16* b;
  std::int64_t ldb;
  const std::int64_t* segments;
};

// ---- staging ---------------------------------------------------------------------------------

/// Column c of Wgrad's transposed operands: the token row it holds, or -1 for a padding column.
struct token_columns {
  grouped_rows rows;
  const std::int64_t* segments;  // [groups + 1] padded starts
  gathered_rows source;
  __device__ const float* row(std::int64_t, std::int64_t c) const {
    if (c >= segments[rows.groups]) return nullptr;
    std::int64_t low = 0, high = rows.groups;  // segments[low] <= c < segments[high]
    while (high - low > 1) {
      const std::int64_t middle = (low + high) / 2;
      (segments[middle] <= c ? low : high) = middle;
    }
    const std::int64_t within = c - segments[low];
    if (within >= rows.offsets[low + 1] - rows.offsets[low]) return nullptr;
    return source.row(rows.offsets[low] + within);
  }
};

/// Column c of expert z's W^T: row c of W_z, or none past n.
struct weight_columns {
  weight_rows weights;
  __device__ const float* row(std::int64_t z, std::int64_t c) const {
    return c < weights.n ? weights.row(z * weights.n + c) : nullptr;
  }
};

/// Where round_transposed_kernel also writes its tiles untransposed: `rows` rows of `ld` (a
/// multiple of 8) per matrix, `stride` apart; out null: nowhere.
struct plain_copy {
  bf16* out = nullptr;
  std::int64_t rows = 0, ld = 0, stride = 0;
};

/// out[z][d][c] = BF16 of columns.row(z, c)[d] (0 where the column has no row) for d < width,
/// c < count; ld_out a multiple of 8. A block moves a 64 x 64 tile through shared memory: each
/// column's row found once, 16-byte loads along d, 16-byte stores of 8 columns along c.
template <class Columns>
__global__ void __launch_bounds__(256)
    round_transposed_kernel(Columns columns, std::int64_t count, std::int64_t width,
                            std::int64_t ld_out, std::int64_t matrix_stride, bf16* out,
                            plain_copy plain) {
  __shared__ float tile[64][65];  // [c][d]
  __shared__ const float* row_of[64];
  const int tid = threadIdx.x;
  const std::int64_t c0 = static_cast<std::int64_t>(blockIdx.x) * 64,
                     d0 = static_cast<std::int64_t>(blockIdx.y) * 64, z = blockIdx.z;
  if (tid < 64) row_of[tid] = c0 + tid < count ? columns.row(z, c0 + tid) : nullptr;
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // 64 columns x 16 pieces of 4
    const int piece = tid + 256 * i, c = piece / 16, d = piece % 16 * 4;
    const float* in = row_of[c];
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (in != nullptr) {
      in += d0 + d;
      if (d0 + d + 4 <= width && reinterpret_cast<std::uintptr_t>(in) % 16 == 0) {
        const float4 q = *reinterpret_cast<const float4*>(in);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = d0 + d + e < width ? in[e] : 0.0f;
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) tile[c][d + e] = v[e];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {  // 64 rows d x 8 pieces of 8 columns
    const int piece = tid + 256 * i, d = piece / 8, c = piece % 8 * 8;
    if (d0 + d >= width || c0 + c >= count) continue;
    uint4 packed;
    packed.x = mma::pack(tile[c][d], tile[c + 1][d]);
    packed.y = mma::pack(tile[c + 2][d], tile[c + 3][d]);
    packed.z = mma::pack(tile[c + 4][d], tile[c + 5][d]);
    packed.w = mma::pack(tile[c + 6][d], tile[c + 7][d]);
    bf16* to = out + z * matrix_stride + (d0 + d) * ld_out + c0 + c;
    if (c0 + c + 8 <= count) {
      *reinterpret_cast<uint4*>(to) = packed;
    } else {
      const bf16* parts = reinterpret_cast<const bf16*>(&packed);
      for (int e = 0; c0 + c + e < count; ++e) to[e] = parts[e];
    }
  }
  if (plain.out == nullptr) return;
#pragma unroll
  for (int i = 0; i < 2; ++i) {  // the same tile untransposed: 64 rows c x 8 pieces of 8 along d
    const int piece = tid + 256 * i, c = piece / 8, d = piece % 8 * 8;
    if (c0 + c >= plain.rows || d0 + d >= plain.ld) continue;
    uint4 packed;
    packed.x = mma::pack(tile[c][d], tile[c][d + 1]);
    packed.y = mma::pack(tile[c][d + 2], tile[c][d + 3]);
    packed.z = mma::pack(tile[c][d + 4], tile[c][d + 5]);
    packed.w = mma::pack(tile[c][d + 6], tile[c][d + 7]);
    *reinterpret_cast<uint4*>(plain.out + z * plain.stride + (c0 + c) * plain.ld + d0 + d) = packed;
  }
}

template <class Columns>
void round_transposed(const Columns& columns, std::int64_t matrices, std::int64_t count,
                      std::int64_t width, std::int64_t ld_out, std::int64_t matrix_stride,
                      bf16* out, cudaStream_t stream, plain_copy plain = {}) {
  if (count == 0 || width == 0 || matrices == 0) return;
  round_transposed_kernel<<<dim3(blocks_for(count, 64), blocks_for(width, 64),
                                 static_cast<unsigned>(matrices)),
                            256, 0, stream>>>(columns, count, width, ld_out, matrix_stride, out,
                                              plain);
  TROUPE_CUDA_LAUNCHED();
}

/// segments[g] = sum over the experts before g of their row counts rounded up to 8.
__global__ void segment_starts_kernel(grouped_rows rows, std::int64_t* segments) {
  std::int64_t at = 0;
  for (std::int64_t g = 0; g < rows.groups; ++g) {
    segments[g] = at;
    at += padded(rows.offsets[g + 1] - rows.offsets[g]);
  }
  segments[rows.groups] = at;
}

// ---- the products ----------------------------------------------------------------------------

/// The tile and what its copies need: output rows [m0, m_end), columns [n0, out_cols), reduction
/// [0, depth) starting at column `r0` of the K-major operands, and B's first row.
struct tile_work {
  std::int64_t group, m0, m_end, depth, r0, n0, out_cols;
  const bf16* b;
};

/// Issues this thread's cp.async copies of slab k0 of A and B into one stage (swizzled lines).
template <pass P>
__device__ inline void copy_slab(const arguments& args, const staged& o, const tile_work& t,
                                 std::int64_t k0, unsigned char* as, unsigned char* bs) {
#pragma unroll
  for (int u = 0; u < copies; ++u) {
    const int l = static_cast<int>(threadIdx.x) + u * threads, i = l / 8, piece = l % 8;
    const std::int64_t red = k0 + piece * 8;
    const std::int64_t outer = t.m0 + i;
    // Fprop and Dgrad: token rows of the expert; Wgrad: dW rows (n).
    const bool valid = red < t.depth && (P == pass::wgrad ? outer < args.n : outer < t.m_end);
    const std::int64_t at = outer * o.lda + t.r0 + red;
    mma::copy16(reinterpret_cast<bf16*>(as + wgmma::swizzled(i, piece)), o.a + (valid ? at : 0),
                valid);
  }
#pragma unroll
  for (int u = 0; u < copies; ++u) {
    const int l = static_cast<int>(threadIdx.x) + u * threads, j = l / 8, piece = l % 8;
    const std::int64_t red = k0 + piece * 8, col = t.n0 + j;
    const bool valid = red < t.depth && col < t.out_cols;
    const std::int64_t at = col * o.ldb + t.r0 + red;
    mma::copy16(reinterpret_cast<bf16*>(bs + wgmma::swizzled(j, piece)), t.b + (valid ? at : 0),
                valid);
  }
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
  std::int64_t r0 = 0;
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
    r0 = o.segments[tile_group] + (tile_first - args.rows.offsets[tile_group]);
  } else if (!block_tile_of<P, rows>(args, tile_group, tile_first, bt)) {
    return;
  } else {
    bt.depth = P == pass::fprop ? o.ldb : o.lda;  // the padded reduction
  }
  const std::int64_t out_cols = P == pass::fprop ? args.n : args.k;
  const bf16* b = o.b;
  if constexpr (P == pass::fprop) b += bt.group * args.n * o.ldb;
  if constexpr (P == pass::dgrad) b += bt.group * args.k * o.ldb;
  const tile_work t{bt.group, bt.m0, bt.m_end,
                    bt.depth, r0,    static_cast<std::int64_t>(blockIdx.x) * cols,
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
  const std::uint32_t a_base =
      mma::shared_address(as) + static_cast<std::uint32_t>(group_of_warps * 64 * wgmma::line_bytes);
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
      wgmma::m64n128k16(acc, wgmma::descriptor(a_base + stage_offset + kk * 32),
                        wgmma::descriptor(b_base + stage_offset + kk * 32));
    wgmma::commit();
    wgmma::wait<0>();
#pragma unroll
    for (int i = 0; i < 64; ++i) wgmma::hold(acc[i]);
  }

  const int w4 = warp % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const std::int64_t row = t.m0 + group_of_warps * 64 + w4 * 16 + lane / 4 + half * 8;
    if (row >= t.m_end) continue;
    float* out = P == pass::wgrad ? gradient_row(args, t.group, row) : args.c + row * args.ldc;
#pragma unroll
    for (int j = 0; j < cols / 8; ++j) {
      const std::int64_t col = t.n0 + j * 8 + lane % 4 * 2;
      if (col >= t.out_cols) continue;
      store_pair<P>(args, out, col, t.out_cols,
                    float2{acc[4 * j + 2 * half], acc[4 * j + 2 * half + 1]});
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

std::size_t rounded_transposed_weights_bytes(std::int64_t groups, std::int64_t n, std::int64_t k) {
  return static_cast<std::size_t>(groups * k * padded(n)) * sizeof(bf16);
}

void round_weights_transposed(const weight_tables& weights, std::int64_t groups, std::int64_t n,
                              std::int64_t k, void* out, void* stream, void* plain) {
  // NOTES: with `plain`, the untransposed copy comes from the same tiles: the f32 weights are read
  // once for both (on the medium config 0.80 + 1.01 ms per layer as two passes).
  const std::int64_t np = padded(n), kp = padded(k);
  round_transposed(weight_columns{weight_rows{weights, n, k}}, groups, np, k, np, k * np,
                   static_cast<bf16*>(out), as_stream(stream),
                   plain_copy{static_cast<bf16*>(plain), n, kp, n * kp});
}

std::size_t wgmma_staging_bytes(const grouped_rows& rows, std::int64_t n, std::int64_t k) {
  const std::int64_t np = padded(n), kp = padded(k);
  const std::int64_t fprop = rows.rows * kp + rows.groups * n * kp;
  const std::int64_t dgrad = rows.rows * np + rows.groups * k * np;
  const std::int64_t wgrad = segment_table_elements(rows.groups) + (n + k) * padded_tokens(rows);
  return static_cast<std::size_t>(std::max({fprop, dgrad, wgrad})) * sizeof(bf16);
}

void launch_wgmma(pass p, const arguments& args, void* stream, void* staging) {
  const cudaStream_t s = as_stream(stream);
  require(staging != nullptr, "grouped_gemm (wgmma)", "no staging buffer for the BF16 operands");
  const std::int64_t np = padded(args.n), kp = padded(args.k), rows_total = args.rows.rows;
  auto* first = static_cast<bf16*>(staging);
  const weight_rows weights{args.weights, args.n, args.k};
  switch (p) {
    case pass::fprop: {
      const bf16* w = first + rows_total * kp;
      if (args.weights.rounded != nullptr)
        w = static_cast<const bf16*>(args.weights.rounded);
      else
        round_rows(weights, args.rows.groups * args.n, args.k, kp, first + rows_total * kp, s);
      round_rows(gathered_rows{args.a, args.lda, args.rows.source, args.rows.divisor}, rows_total,
                 args.k, kp, first, s);
      launch_products<pass::fprop>(args, {first, kp, w, kp, nullptr},
                                   dim3(blocks_for(args.n, cols), row_tiles<rows>(args.rows)), s);
      break;
    }
    case pass::dgrad: {
      const bf16* wt = first + rows_total * np;
      if (args.weights.rounded_transposed != nullptr)
        wt = static_cast<const bf16*>(args.weights.rounded_transposed);
      else
        round_transposed(weight_columns{weights}, args.rows.groups, np, args.k, np, args.k * np,
                         first + rows_total * np, s);
      round_rows(gathered_rows{args.a, args.lda, nullptr, 1}, rows_total, args.n, np, first, s);
      launch_products<pass::dgrad>(args, {first, np, wt, np, nullptr},
                                   dim3(blocks_for(args.k, cols), row_tiles<rows>(args.rows)), s);
      break;
    }
    case pass::wgrad: {
      auto* segments = reinterpret_cast<std::int64_t*>(first);
      const std::int64_t tokens = padded_tokens(args.rows);
      bf16* dyt = first + segment_table_elements(args.rows.groups);
      bf16* xt = dyt + args.n * tokens;
      segment_starts_kernel<<<1, 1, 0, s>>>(args.rows, segments);
      TROUPE_CUDA_LAUNCHED();
      round_transposed(token_columns{args.rows, segments, {args.a, args.lda, nullptr, 1}}, 1,
                       tokens, args.n, tokens, 0, dyt, s);
      round_transposed(
          token_columns{
              args.rows, segments, {args.b, args.ldb, args.rows.source, args.rows.divisor}},
          1, tokens, args.k, tokens, 0, xt, s);
      launch_products<pass::wgrad>(args, {dyt, tokens, xt, tokens, segments},
                                   dim3(blocks_for(args.k, cols), blocks_for(args.n, rows),
                                        row_tiles<wgrad_chunk>(args.rows)),
                                   s);
      break;
    }
  }
}

}  // namespace troupe::kernels::cuda::grouped
