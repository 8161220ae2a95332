#include <cuda_bf16.h>

#include <algorithm>
#include <utility>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_packing.hpp"
#include "kernels/cuda/mma.cuh"

namespace troupe::kernels::cuda {

namespace {

// NOTES: the BF16 flash attention of model.precision = "bf16", on the tensor cores through
// mma.sync (m16n8k16, BF16 operands, FP32 accumulation), FlashAttention-2's algorithm. Forward
// keeps the per-row log-sum-exp; backward recomputes the probabilities, dK/dV per key block and
// dQ per query block, so memory stays linear in the sequence. A block owns 64 rows (queries, or
// keys for dK/dV), a warp 16 of them; the other side is walked in tiles. The operands are
// rounded to BF16 once per call into packed [batch, head, row, column] copies (the shared rope
// key behind each head's nope columns), so a tile is one contiguous block that cp.async brings
// into shared memory while the previous tile is multiplied (two buffers per streamed operand).
// Tiles stay row-major as in global memory; every operand reaches the tensor cores through
// ldmatrix, with .trans where the product needs the tile's
// transpose (V in P V, dO and Q in dV and dK, K in dQ), so no transposed copy is ever made.
// The scores, probabilities and their gradients never leave registers: an m16n8 accumulator
// holds, per lane, the same rows and columns that an m16k16 A operand needs, so P and dS are
// packed to BF16 in place and fed to the next product (the softmax runs on each lane's two
// rows, reduced over the four lanes that share a row). Scores are kept in log2 units (exp2f);
// the saved log-sum-exp is natural, as the FP32 kernels' (attention.cu), so either backward
// takes either forward's. Query blocks run the longest rows first (causal work grows with the
// row). Head sizes are template parameters (the accumulator arrays are sized by them); other
// sizes use the FP32 kernels.
using namespace flash;
using namespace mma;

constexpr int block_rows = 64;  // rows a block owns
constexpr int warps = 4;        // 16 rows each
constexpr int threads = warps * 32;
constexpr float log2e = 1.4426950408889634f;

template <int D>
constexpr int ld_of = D + 8;  // bf16 rows: 16-byte multiples, ldmatrix rows on distinct banks

/// Query rows per step of the dK/dV kernel: 32 for wide heads keeps its accumulators (dK, dV,
/// S^T, dP^T) within the register file.
template <int QK, int V>
constexpr int query_step = QK + V > 192 ? 32 : 64;

/// c[n] += A B for the A operand `a` of 16 rows and the B^T tile s[n][k], n in [0, N), over
/// depth [k0, k0 + 16).
template <int N>
__device__ inline void multiply_rows(float (&c)[N / 8][4], const unsigned (&a)[4], const bf16* s,
                                     int ld, int k0) {
#pragma unroll
  for (int n = 0; n < N / 16; ++n) {
    unsigned b[4];
    load_b_rows(b, s, ld, n * 16, k0);
    mma::mma(c[2 * n], a, b[0], b[1]);
    mma::mma(c[2 * n + 1], a, b[2], b[3]);
  }
}

/// c[n] += A B for the A operand `a` (16 rows, depth [k0, k0 + 16)) and the B tile s[k][n].
template <int N>
__device__ inline void multiply_columns(float (&c)[N / 8][4], const unsigned (&a)[4], const bf16* s,
                                        int ld, int k0) {
#pragma unroll
  for (int n = 0; n < N / 16; ++n) {
    unsigned b[4];
    load_b_columns(b, s, ld, k0, n * 16);
    mma::mma(c[2 * n], a, b[0], b[1]);
    mma::mma(c[2 * n + 1], a, b[2], b[3]);
  }
}

/// c (16 x N) = A B^T for the warp's 16 rows [r0, r0 + 16) of row-major `a` (D wide) and the N
/// rows of `b` (D wide).
template <int D, int N>
__device__ inline void scores(float (&c)[N / 8][4], const bf16* a, int r0, const bf16* b) {
#pragma unroll
  for (int n = 0; n < N / 8; ++n) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
#pragma unroll
  for (int k = 0; k < D / 16; ++k) {
    unsigned fa[4];
    load_a(fa, a, ld_of<D>, r0, k * 16);
    multiply_rows<N>(c, fa, b, ld_of<D>, k * 16);
  }
}

/// The A operand of columns [16 k, 16 k + 16) of a 16-row accumulator: the layouts agree.
template <int N>
__device__ inline void as_operand(unsigned (&a)[4], const float (&c)[N / 8][4], int k) {
  a[0] = pack(c[2 * k][0], c[2 * k][1]);
  a[1] = pack(c[2 * k][2], c[2 * k][3]);
  a[2] = pack(c[2 * k + 1][0], c[2 * k + 1][1]);
  a[3] = pack(c[2 * k + 1][2], c[2 * k + 1][3]);
}

/// acc (16 x N) += C (16 x K, an accumulator) B for the row-major B tile s[k][n].
template <int K, int N>
__device__ inline void accumulate(float (&acc)[N / 8][4], const float (&c)[K / 8][4],
                                  const bf16* s) {
#pragma unroll
  for (int k = 0; k < K / 16; ++k) {
    unsigned a[4];
    as_operand<K>(a, c, k);
    multiply_columns<N>(acc, a, s, ld_of<N>, k * 16);
  }
}

/// Bytes of dynamic shared memory, each region rounded to 128 bytes.
struct layout {
  std::size_t bytes = 0;
  __host__ __device__ std::size_t take(std::size_t size) {
    const std::size_t at = bytes;
    bytes += (size + 127) / 128 * 128;
    return at;
  }
};

/// Writes a warp's 16 x N accumulator, times `scale`, to rows `rows[0]` (lane / 4) and `rows[1]`
/// (lane / 4 + 8) of x's (b, h) slice; columns from `split` on go to `rest` (the rope key).
template <int N>
__device__ void write_rows(const float (&c)[N / 8][4], float scale, const attention_result& x,
                           const attention_result& rest, int split, std::int64_t b, std::int64_t h,
                           const std::int64_t (&rows)[2], std::int64_t length) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= length) continue;
    float* main = x.data + b * x.batch_stride + h * x.head_stride + rows[r] * x.row_stride;
    float* tail = rest.data != nullptr ? rest.data + b * rest.batch_stride + h * rest.head_stride +
                                             rows[r] * rest.row_stride
                                       : nullptr;
#pragma unroll
    for (int n = 0; n < N / 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = n * 8 + lane % 4 * 2 + e;
        const float value = scale * c[n][2 * r + e];
        if (col < split)
          main[col] = value;
        else
          tail[col - split] = value;
      }
  }
}

// ---- packing -------------------------------------------------------------------------------

/// The operands rounded to BF16 once per call, each (b, h) slice a contiguous [length][D] block:
/// q and k [B][H][L][QK] (k with the shared rope key copied behind every head's nope columns),
/// v and dO [B][H][L][V]. Tiles then arrive by cp.async, 16 bytes per copy.
struct packed {
  const bf16 *q = nullptr, *k = nullptr, *v = nullptr, *d_out = nullptr;
};

/// BF16 elements of the packed operands: q, k and v, and dO for the backward.
std::int64_t packed_elements(const attention_problem& p, bool backward) {
  return attention_slice_rows(p) * (2 * p.qk_dim + (backward ? 2 : 1) * p.v_dim);
}

/// Packs q, k (with the rope key), v and, for the backward, dO into `staging`
/// (attention_packing.hpp).
packed pack_operands(const operands& o, const attention_operand* d_out, bf16* staging,
                     cudaStream_t stream) {
  const attention_problem& p = o.p;
  const int qk = static_cast<int>(p.qk_dim), v = static_cast<int>(p.v_dim),
            rope = static_cast<int>(p.rope_dim);
  bf16* q = staging;
  bf16* k = q + attention_slice_rows(p) * qk;
  bf16* vs = k + attention_slice_rows(p) * qk;
  bf16* dos = vs + attention_slice_rows(p) * v;
  const auto bits = [](bf16* x) { return reinterpret_cast<std::uint16_t*>(x); };
  attention_pack jobs[max_attention_pack_jobs];
  int count = 0;
  jobs[count++] = {o.q, qk, bits(q), qk, 0};
  jobs[count++] = {o.k, qk - rope, bits(k), qk, 0};
  if (rope > 0) jobs[count++] = {o.rope, rope, bits(k), qk, qk - rope};
  jobs[count++] = {o.v, v, bits(vs), v, 0};
  if (d_out != nullptr) jobs[count++] = {*d_out, v, bits(dos), v, 0};
  pack_attention_bf16(p, jobs, count, stream);
  return {q, k, vs, d_out != nullptr ? dos : nullptr};
}

/// Rows [row0, row0 + Rows) of a packed slice ([length][D] BF16) into s (leading dimension
/// ld_of<D>) by cp.async; rows past the sequence are zero-filled. Not committed.
template <int D, int Rows>
__device__ void copy_tile(bf16* s, const bf16* slice, std::int64_t row0, std::int64_t length) {
  constexpr int chunks = D / 8;
  for (int index = threadIdx.x; index < Rows * chunks; index += threads) {
    const int r = index / chunks, c = index % chunks * 8;
    const std::int64_t row = row0 + r;
    const bool inside = row < length;
    copy16(s + r * ld_of<D> + c, slice + (inside ? row : row0) * D + c, inside);
  }
}

// ---- forward ---------------------------------------------------------------------------------

template <int QK, int V>
struct forward_smem {
  std::size_t q, k[2], v[2], bytes;
  __host__ __device__ forward_smem() {
    layout l;
    q = l.take(block_rows * ld_of<QK> * 2);
    for (int i = 0; i < 2; ++i) {
      k[i] = l.take(block_rows * ld_of<QK> * 2);
      v[i] = l.take(block_rows * ld_of<V> * 2);
    }
    bytes = l.bytes;
  }
};

template <int QK, int V>
__global__ void __launch_bounds__(threads)
    forward_kernel(operands o, packed in, attention_result out, float* lse) {
  extern __shared__ __align__(128) unsigned char shared[];
  const forward_smem<QK, V> at;
  auto* qs = reinterpret_cast<bf16*>(shared + at.q);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t slice = (b * o.p.heads + h) * length;
  const bf16 *q_slice = in.q + slice * QK, *k_slice = in.k + slice * QK,
             *v_slice = in.v + slice * V;
  const std::int64_t q0 = static_cast<std::int64_t>(gridDim.x - 1 - blockIdx.x) * block_rows;
  const std::int64_t first = q0 + warp * 16;  // the warp's first query
  const std::int64_t rows[2] = {first + lane / 4, first + lane / 4 + 8};
  const float scale = o.p.scale * log2e;
  float acc[V / 8][4];
#pragma unroll
  for (int n = 0; n < V / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const std::int64_t key_end = min(q0 + block_rows, length);
  const int tiles = static_cast<int>((key_end + block_rows - 1) / block_rows);
  copy_tile<QK, block_rows>(qs, q_slice, q0, length);
  copy_tile<QK, block_rows>(reinterpret_cast<bf16*>(shared + at.k[0]), k_slice, 0, length);
  copy_tile<V, block_rows>(reinterpret_cast<bf16*>(shared + at.v[0]), v_slice, 0, length);
  commit_copies();
  for (int t = 0; t < tiles; ++t) {
    const std::int64_t k0 = static_cast<std::int64_t>(t) * block_rows;
    if (t + 1 < tiles) {  // the next tile's copies run during this tile's products
      copy_tile<QK, block_rows>(reinterpret_cast<bf16*>(shared + at.k[(t + 1) % 2]), k_slice,
                                k0 + block_rows, length);
      copy_tile<V, block_rows>(reinterpret_cast<bf16*>(shared + at.v[(t + 1) % 2]), v_slice,
                               k0 + block_rows, length);
      commit_copies();
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();
    const auto* ks = reinterpret_cast<const bf16*>(shared + at.k[t % 2]);
    const auto* vs = reinterpret_cast<const bf16*>(shared + at.v[t % 2]);
    if (k0 <= first + 15) {  // else every key of the tile is after the warp's queries
      float s[block_rows / 8][4];
      scores<QK, block_rows>(s, qs, warp * 16, ks);
      // NOTES: masks only where the tile holds a key after one of the warp's queries (the
      // diagonal) or the warp has rows past the end: the per-element index arithmetic cost more
      // issue slots than the tile's products at these head sizes. Elsewhere the maximum is taken
      // on the raw scores (scale > 0) and each probability is one FFMA and one exp2.
      const bool masked = k0 + block_rows - 1 > first || first + 15 >= length;
      float tile_max[2] = {-INFINITY, -INFINITY};
      if (masked) {
        const int row_in[2] = {static_cast<int>(rows[0] - k0), static_cast<int>(rows[1] - k0)};
        const bool past_end[2] = {rows[0] >= length, rows[1] >= length};
#pragma unroll
        for (int n = 0; n < block_rows / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2, j = n * 8 + lane % 4 * 2 + e % 2;  // the key, from k0
            if (past_end[r] || j > row_in[r]) s[n][e] = -INFINITY;
            tile_max[r] = fmaxf(tile_max[r], s[n][e]);
          }
      } else {
#pragma unroll
        for (int n = 0; n < block_rows / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) tile_max[e / 2] = fmaxf(tile_max[e / 2], s[n][e]);
      }
      float base[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
        tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
        const float m_new = fmaxf(m[r], tile_max[r] * scale);
        base[r] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing to see yet
        const float correction = exp2f(m[r] - base[r]);
        m[r] = m_new;
        l[r] *= correction;
#pragma unroll
        for (int n = 0; n < V / 8; ++n) {
          acc[n][2 * r] *= correction;
          acc[n][2 * r + 1] *= correction;
        }
      }
#pragma unroll
      for (int n = 0; n < block_rows / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[n][e] = exp2f(fmaf(s[n][e], scale, -base[e / 2]));  // -inf stays 0
          sum[e / 2] += s[n][e];
        }
      l[0] += sum[0];
      l[1] += sum[1];
      accumulate<block_rows, V>(acc, s, vs);  // O += P V
    }
    __syncthreads();  // this tile's buffers are refilled by the copies issued next
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float inverse = 1.0f / l[r];
#pragma unroll
    for (int n = 0; n < V / 8; ++n) {
      acc[n][2 * r] *= inverse;
      acc[n][2 * r + 1] *= inverse;
    }
    if (lane % 4 == 0 && rows[r] < length) lse[slice + rows[r]] = (m[r] + log2f(l[r])) / log2e;
  }
  write_rows<V>(acc, 1.0f, out, attention_result{}, V, b, h, rows, length);
}

// ---- backward --------------------------------------------------------------------------------

template <int QK, int V>
struct key_smem {
  static constexpr int step = query_step<QK, V>;
  std::size_t k, v, q[2], d_out[2], lse[2], delta[2], bytes;
  __host__ __device__ key_smem() {
    layout l;
    k = l.take(block_rows * ld_of<QK> * 2);
    v = l.take(block_rows * ld_of<V> * 2);
    for (int i = 0; i < 2; ++i) {
      q[i] = l.take(step * ld_of<QK> * 2);
      d_out[i] = l.take(step * ld_of<V> * 2);
      lse[i] = l.take(step * 4);
      delta[i] = l.take(step * 4);
    }
    bytes = l.bytes;
  }
};

// One block per 64 keys: dK and dV over every query step that sees them.
template <int QK, int V>
__global__ void __launch_bounds__(threads)
    key_gradient_kernel(backward_operands bo, packed in, attention_result dk,
                        attention_result d_rope, attention_result dv) {
  constexpr int step = query_step<QK, V>;
  extern __shared__ __align__(128) unsigned char shared[];
  const key_smem<QK, V> at;
  const operands& o = bo.in;
  auto* ks = reinterpret_cast<bf16*>(shared + at.k);
  auto* vs = reinterpret_cast<bf16*>(shared + at.v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t slice = (b * o.p.heads + h) * length;
  const bf16 *q_slice = in.q + slice * QK, *do_slice = in.d_out + slice * V;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.x) * block_rows;
  const std::int64_t first = k0 + warp * 16;  // the warp's first key
  const std::int64_t keys[2] = {first + lane / 4, first + lane / 4 + 8};
  const float scale = o.p.scale * log2e;
  // The query steps' copies and their lse and delta, into buffer `i`.
  const auto fetch = [&](std::int64_t q0, int i) {
    copy_tile<QK, step>(reinterpret_cast<bf16*>(shared + at.q[i]), q_slice, q0, length);
    copy_tile<V, step>(reinterpret_cast<bf16*>(shared + at.d_out[i]), do_slice, q0, length);
    commit_copies();
    auto* lse_s = reinterpret_cast<float*>(shared + at.lse[i]);
    auto* delta_s = reinterpret_cast<float*>(shared + at.delta[i]);
    for (int r = threadIdx.x; r < step; r += threads) {
      const std::int64_t row = q0 + r;
      lse_s[r] = row < length ? bo.lse[slice + row] * log2e : 0.0f;
      delta_s[r] = row < length ? bo.delta[slice + row] : 0.0f;
    }
  };
  copy_tile<QK, block_rows>(ks, in.k + slice * QK, k0, length);
  copy_tile<V, block_rows>(vs, in.v + slice * V, k0, length);
  fetch(k0, 0);  // commits the keys' copies with the first step's
  float dk_acc[QK / 8][4], dv_acc[V / 8][4];
#pragma unroll
  for (int n = 0; n < QK / 8; ++n) dk_acc[n][0] = dk_acc[n][1] = dk_acc[n][2] = dk_acc[n][3] = 0;
#pragma unroll
  for (int n = 0; n < V / 8; ++n) dv_acc[n][0] = dv_acc[n][1] = dv_acc[n][2] = dv_acc[n][3] = 0;
  const int steps = static_cast<int>((length - k0 + step - 1) / step);
  for (int t = 0; t < steps; ++t) {
    const std::int64_t q0 = k0 + static_cast<std::int64_t>(t) * step;
    if (t + 1 < steps) {
      fetch(q0 + step, (t + 1) % 2);
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();
    const auto* qs = reinterpret_cast<const bf16*>(shared + at.q[t % 2]);
    const auto* dos = reinterpret_cast<const bf16*>(shared + at.d_out[t % 2]);
    const auto* lse_s = reinterpret_cast<const float*>(shared + at.lse[t % 2]);
    const auto* delta_s = reinterpret_cast<const float*>(shared + at.delta[t % 2]);
    if (q0 + step - 1 >= first) {  // else every query of the step is before the warp's keys
      float p[step / 8][4], ds[step / 8][4];
      scores<QK, step>(p, ks, warp * 16, qs);   // S^T = K Q^T
      scores<V, step>(ds, vs, warp * 16, dos);  // dP^T = V dO^T
      // Masks only where a query of the step comes before one of the warp's keys or is past
      // the end (see the forward's NOTES).
      const bool masked = q0 < first + 15 || q0 + step > length;
      const int key_in[2] = {static_cast<int>(keys[0] - q0), static_cast<int>(keys[1] - q0)};
      const int valid = static_cast<int>(min(static_cast<std::int64_t>(step), length - q0));
#pragma unroll
      for (int n = 0; n < step / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ii = n * 8 + lane % 4 * 2 + e % 2;
          float probability = exp2f(fmaf(p[n][e], scale, -lse_s[ii]));
          if (masked && (ii >= valid || key_in[e / 2] > ii)) probability = 0.0f;
          p[n][e] = probability;
          ds[n][e] = probability * (ds[n][e] - delta_s[ii]);
        }
      accumulate<step, V>(dv_acc, p, dos);   // dV += P^T dO
      accumulate<step, QK>(dk_acc, ds, qs);  // dK += dS^T Q
    }
    __syncthreads();
  }
  write_rows<V>(dv_acc, 1.0f, dv, attention_result{}, V, b, h, keys, length);
  write_rows<QK>(dk_acc, o.p.scale, dk, d_rope, QK - static_cast<int>(o.p.rope_dim), b, h, keys,
                 length);
}

template <int QK, int V>
struct query_smem {
  std::size_t q, d_out, k[2], v[2], bytes;
  __host__ __device__ query_smem() {
    layout l;
    q = l.take(block_rows * ld_of<QK> * 2);
    d_out = l.take(block_rows * ld_of<V> * 2);
    for (int i = 0; i < 2; ++i) {
      k[i] = l.take(block_rows * ld_of<QK> * 2);
      v[i] = l.take(block_rows * ld_of<V> * 2);
    }
    bytes = l.bytes;
  }
};

// One block per 64 queries: dQ over every key tile they see.
template <int QK, int V>
__global__ void __launch_bounds__(threads)
    query_gradient_kernel(backward_operands bo, packed in, attention_result dq) {
  extern __shared__ __align__(128) unsigned char shared[];
  const query_smem<QK, V> at;
  const operands& o = bo.in;
  auto* qs = reinterpret_cast<bf16*>(shared + at.q);
  auto* dos = reinterpret_cast<bf16*>(shared + at.d_out);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t slice = (b * o.p.heads + h) * length;
  const bf16 *k_slice = in.k + slice * QK, *v_slice = in.v + slice * V;
  const std::int64_t q0 = static_cast<std::int64_t>(gridDim.x - 1 - blockIdx.x) * block_rows;
  const std::int64_t first = q0 + warp * 16;
  const std::int64_t rows[2] = {first + lane / 4, first + lane / 4 + 8};
  const float scale = o.p.scale * log2e;
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lse_r[r] = rows[r] < length ? bo.lse[slice + rows[r]] * log2e : 0.0f;
    delta_r[r] = rows[r] < length ? bo.delta[slice + rows[r]] : 0.0f;
  }
  float dq_acc[QK / 8][4];
#pragma unroll
  for (int n = 0; n < QK / 8; ++n) dq_acc[n][0] = dq_acc[n][1] = dq_acc[n][2] = dq_acc[n][3] = 0;
  const std::int64_t key_end = min(q0 + block_rows, length);
  const int tiles = static_cast<int>((key_end + block_rows - 1) / block_rows);
  copy_tile<QK, block_rows>(qs, in.q + slice * QK, q0, length);
  copy_tile<V, block_rows>(dos, in.d_out + slice * V, q0, length);
  copy_tile<QK, block_rows>(reinterpret_cast<bf16*>(shared + at.k[0]), k_slice, 0, length);
  copy_tile<V, block_rows>(reinterpret_cast<bf16*>(shared + at.v[0]), v_slice, 0, length);
  commit_copies();
  for (int t = 0; t < tiles; ++t) {
    const std::int64_t k0 = static_cast<std::int64_t>(t) * block_rows;
    if (t + 1 < tiles) {
      copy_tile<QK, block_rows>(reinterpret_cast<bf16*>(shared + at.k[(t + 1) % 2]), k_slice,
                                k0 + block_rows, length);
      copy_tile<V, block_rows>(reinterpret_cast<bf16*>(shared + at.v[(t + 1) % 2]), v_slice,
                               k0 + block_rows, length);
      commit_copies();
      wait_copies<1>();
    } else {
      wait_copies<0>();
    }
    __syncthreads();
    const auto* ks = reinterpret_cast<const bf16*>(shared + at.k[t % 2]);
    const auto* vs = reinterpret_cast<const bf16*>(shared + at.v[t % 2]);
    if (k0 <= first + 15) {
      float s[block_rows / 8][4], dp[block_rows / 8][4];
      scores<QK, block_rows>(s, qs, warp * 16, ks);   // S = Q K^T
      scores<V, block_rows>(dp, dos, warp * 16, vs);  // dP = dO V^T
      // Masks only on the diagonal or past the end (see the forward's NOTES).
      const bool masked = k0 + block_rows - 1 > first || first + 15 >= length;
      const int row_in[2] = {static_cast<int>(rows[0] - k0), static_cast<int>(rows[1] - k0)};
      const bool past_end[2] = {rows[0] >= length, rows[1] >= length};
#pragma unroll
      for (int n = 0; n < block_rows / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2, j = n * 8 + lane % 4 * 2 + e % 2;
          float probability = exp2f(fmaf(s[n][e], scale, -lse_r[r]));
          if (masked && (past_end[r] || j > row_in[r])) probability = 0.0f;
          s[n][e] = probability * (dp[n][e] - delta_r[r]);
        }
      accumulate<block_rows, QK>(dq_acc, s, ks);  // dQ += dS K
    }
    __syncthreads();
  }
  write_rows<QK>(dq_acc, o.p.scale, dq, attention_result{}, QK, b, h, rows, length);
}

// ---- launch ----------------------------------------------------------------------------------

dim3 grid_of(const attention_problem& p) {
  return dim3(blocks_for(p.length, block_rows), static_cast<unsigned>(p.heads),
              static_cast<unsigned>(p.batch));
}

template <int QK, int V>
void forward(const attention_problem& p, const operands& o, const packed& in, attention_result out,
             float* lse, cudaStream_t stream) {
  const std::size_t bytes = forward_smem<QK, V>().bytes;
  allow_shared_memory(forward_kernel<QK, V>, bytes);
  forward_kernel<QK, V><<<grid_of(p), threads, bytes, stream>>>(o, in, out, lse);
  TROUPE_CUDA_LAUNCHED();
}

template <int QK, int V>
void backward(const attention_problem& p, const backward_operands& bo, const packed& in,
              attention_result dq, attention_result dk, attention_result d_rope,
              attention_result dv, cudaStream_t stream) {
  const std::size_t key_bytes = key_smem<QK, V>().bytes;
  allow_shared_memory(key_gradient_kernel<QK, V>, key_bytes);
  key_gradient_kernel<QK, V><<<grid_of(p), threads, key_bytes, stream>>>(bo, in, dk, d_rope, dv);
  TROUPE_CUDA_LAUNCHED();
  const std::size_t query_bytes = query_smem<QK, V>().bytes;
  allow_shared_memory(query_gradient_kernel<QK, V>, query_bytes);
  query_gradient_kernel<QK, V><<<grid_of(p), threads, query_bytes, stream>>>(bo, in, dq);
  TROUPE_CUDA_LAUNCHED();
}

/// Calls f.template operator()<QK, V>() for the instantiated head sizes (supported() lists
/// them); false for others.
template <class F>
bool with_sizes(const attention_problem& p, F&& f) {
  if (p.qk_dim == 32 && p.v_dim == 16) return f.template operator()<32, 16>(), true;
  if (p.qk_dim == 96 && p.v_dim == 64) return f.template operator()<96, 64>(), true;
  if (p.qk_dim == 128 && p.v_dim == 128) return f.template operator()<128, 128>(), true;
  if (p.qk_dim == 192 && p.v_dim == 128) return f.template operator()<192, 128>(), true;
  return false;
}

bool supported(const attention_problem& p) {
  const std::pair<std::int64_t, std::int64_t> sizes{p.qk_dim, p.v_dim};
  const bool built = sizes == std::pair<std::int64_t, std::int64_t>{32, 16} ||
                     sizes == std::pair<std::int64_t, std::int64_t>{96, 64} ||
                     sizes == std::pair<std::int64_t, std::int64_t>{128, 128} ||
                     sizes == std::pair<std::int64_t, std::int64_t>{192, 128};
  // rope_dim % 4: the operands are packed four floats at a time, the rope key's from its own
  // row.
  return built && p.rope_dim >= 0 && p.rope_dim < p.qk_dim && p.rope_dim % 4 == 0 && p.batch >= 0 &&
         p.heads >= 0 && p.length >= 0 && p.batch <= 65535 && p.heads <= 65535;
}

}  // namespace

bool attention_bf16_supported(const attention_problem& problem) {
  return supported(problem);
}

std::size_t attention_bf16_staging_bytes(const attention_problem& problem, bool backward) {
  return supported(problem) ? static_cast<std::size_t>(packed_elements(problem, backward)) * 2 : 0;
}

void attention_forward_bf16(const attention_problem& problem, attention_operand q,
                            attention_operand k, attention_operand key_rope, attention_operand v,
                            attention_result o, float* lse, void* stream, void* staging) {
  if (!supported(problem)) return attention_forward(problem, q, k, key_rope, v, o, lse, stream);
  if (problem.batch * problem.heads * problem.length == 0) return;
  const cudaStream_t s = as_stream(stream);
  const stream_staging buffer(staging, attention_bf16_staging_bytes(problem, false), s);
  const operands in{problem, q, k, key_rope, v};
  const packed bf16_in = pack_operands(in, nullptr, static_cast<bf16*>(buffer.data), s);
  with_sizes(problem, [&]<int QK, int V>() { forward<QK, V>(problem, in, bf16_in, o, lse, s); });
}

void attention_backward_bf16(const attention_problem& problem, attention_operand q,
                             attention_operand k, attention_operand key_rope, attention_operand v,
                             attention_operand o, attention_operand d_o, const float* lse,
                             attention_result dq, attention_result dk, attention_result d_key_rope,
                             attention_result dv, float* scratch, void* stream, void* staging) {
  if (!supported(problem))
    return attention_backward(problem, q, k, key_rope, v, o, d_o, lse, dq, dk, d_key_rope, dv,
                              scratch, stream);
  require(problem.rope_dim == 0 || d_key_rope.data != nullptr, "attention_backward_bf16",
          "a rope key needs a tensor for its gradient");
  const std::int64_t rows = attention_backward_scratch(problem);
  if (rows == 0) return;
  const cudaStream_t s = as_stream(stream);
  flash::launch_delta(problem, o, d_o, scratch, stream);
  const stream_staging buffer(staging, attention_bf16_staging_bytes(problem, true), s);
  const backward_operands bo{operands{problem, q, k, key_rope, v}, d_o, lse, scratch};
  const packed bf16_in = pack_operands(bo.in, &d_o, static_cast<bf16*>(buffer.data), s);
  with_sizes(problem, [&]<int QK, int V>() {
    backward<QK, V>(problem, bo, bf16_in, dq, dk, d_key_rope, dv, s);
  });
}

}  // namespace troupe::kernels::cuda
