#include <cuda_bf16.h>

#include <mutex>
#include <set>
#include <utility>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/mma.cuh"

namespace troupe::kernels::cuda {

namespace {

// NOTES: the BF16 flash attention of model.precision = "bf16", on the tensor cores through
// mma.sync (m16n8k16, BF16 operands, FP32 accumulation), FlashAttention-2's algorithm. Forward
// keeps the per-row log-sum-exp; backward recomputes the probabilities, dK/dV per key block and
// dQ per query block, so memory stays linear in the sequence. A block owns 64 rows (queries, or
// keys for dK/dV), a warp 16 of them; the other side is walked in tiles. Tiles are rounded to
// BF16 as they are loaded into shared memory, row-major as in global memory; every operand
// reaches the tensor cores through ldmatrix, with .trans where the product needs the tile's
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

// ---- loading -------------------------------------------------------------------------------

/// Rows [row0, row0 + Rows) of x's (b, h) slice, columns [0, width), into s[r * ld + col0 + c] as
/// BF16, four floats per load; rows past the sequence read as zeros. width and col0 are
/// multiples of 4 (supported()).
template <int Rows>
__device__ void load_tile(bf16* s, int ld, const attention_operand& x, std::int64_t b,
                          std::int64_t h, std::int64_t row0, std::int64_t length, int col0,
                          int width) {
  const int quads = width / 4;
  for (int index = threadIdx.x; index < Rows * quads; index += threads) {
    const int r = index / quads, c = index % quads * 4;
    const std::int64_t row = row0 + r;
    float4 v{0.0f, 0.0f, 0.0f, 0.0f};
    if (row < length) {
      const float* from = row_of(x, b, h, row) + c;
      if (reinterpret_cast<std::uintptr_t>(from) % 16 == 0) {
        v = *reinterpret_cast<const float4*>(from);
      } else {
        v = float4{from[0], from[1], from[2], from[3]};
      }
    }
    store4(s + r * ld + col0 + c, v);
  }
}

/// Keys [row0, row0 + Rows): the nope columns from k, the rope columns from the shared rope key.
template <int QK, int Rows>
__device__ void load_keys(bf16* s, const operands& o, std::int64_t b, std::int64_t h,
                          std::int64_t row0) {
  const int nope = QK - static_cast<int>(o.p.rope_dim);
  load_tile<Rows>(s, ld_of<QK>, o.k, b, h, row0, o.p.length, 0, nope);
  if (o.p.rope_dim > 0)
    load_tile<Rows>(s, ld_of<QK>, o.rope, b, h, row0, o.p.length, nope,
                    static_cast<int>(o.p.rope_dim));
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

// ---- forward ---------------------------------------------------------------------------------

template <int QK, int V>
struct forward_smem {
  std::size_t q, k, v, bytes;
  __host__ __device__ forward_smem() {
    layout l;
    q = l.take(block_rows * ld_of<QK> * 2);
    k = l.take(block_rows * ld_of<QK> * 2);
    v = l.take(block_rows * ld_of<V> * 2);
    bytes = l.bytes;
  }
};

template <int QK, int V>
__global__ void __launch_bounds__(threads)
    forward_kernel(operands o, attention_result out, float* lse) {
  extern __shared__ __align__(128) unsigned char shared[];
  const forward_smem<QK, V> at;
  auto* qs = reinterpret_cast<bf16*>(shared + at.q);
  auto* ks = reinterpret_cast<bf16*>(shared + at.k);
  auto* vs = reinterpret_cast<bf16*>(shared + at.v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t q0 = static_cast<std::int64_t>(gridDim.x - 1 - blockIdx.x) * block_rows;
  const std::int64_t first = q0 + warp * 16;  // the warp's first query
  const std::int64_t rows[2] = {first + lane / 4, first + lane / 4 + 8};
  const float scale = o.p.scale * log2e;
  load_tile<block_rows>(qs, ld_of<QK>, o.q, b, h, q0, length, 0, QK);
  float acc[V / 8][4];
#pragma unroll
  for (int n = 0; n < V / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const std::int64_t key_end = min(q0 + block_rows, length);
  for (std::int64_t k0 = 0; k0 < key_end; k0 += block_rows) {
    __syncthreads();
    load_keys<QK, block_rows>(ks, o, b, h, k0);
    load_tile<block_rows>(vs, ld_of<V>, o.v, b, h, k0, length, 0, V);
    __syncthreads();
    if (k0 > first + 15) continue;  // every key of the tile is after the warp's queries
    float s[block_rows / 8][4];
    scores<QK, block_rows>(s, qs, warp * 16, ks);
    const bool diagonal = k0 + block_rows - 1 > first;
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < block_rows / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const std::int64_t j = k0 + n * 8 + lane % 4 * 2 + e % 2;
        const bool hidden = rows[r] >= length || (diagonal && j > rows[r]);
        s[n][e] = hidden ? -INFINITY : s[n][e] * scale;
        tile_max[r] = fmaxf(tile_max[r], s[n][e]);
      }
    float base[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float m_new = fmaxf(m[r], tile_max[r]);
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
        s[n][e] = exp2f(s[n][e] - base[e / 2]);
        sum[e / 2] += s[n][e];
      }
    l[0] += sum[0];
    l[1] += sum[1];
    accumulate<block_rows, V>(acc, s, vs);  // O += P V
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
    if (lane % 4 == 0 && rows[r] < length)
      lse[(b * o.p.heads + h) * length + rows[r]] = (m[r] + log2f(l[r])) / log2e;
  }
  write_rows<V>(acc, 1.0f, out, attention_result{}, V, b, h, rows, length);
}

// ---- backward --------------------------------------------------------------------------------

template <int QK, int V>
struct key_smem {
  static constexpr int step = query_step<QK, V>;
  std::size_t k, v, q, d_out, lse, delta, bytes;
  __host__ __device__ key_smem() {
    layout l;
    k = l.take(block_rows * ld_of<QK> * 2);
    v = l.take(block_rows * ld_of<V> * 2);
    q = l.take(step * ld_of<QK> * 2);
    d_out = l.take(step * ld_of<V> * 2);
    lse = l.take(step * 4);
    delta = l.take(step * 4);
    bytes = l.bytes;
  }
};

// One block per 64 keys: dK and dV over every query step that sees them.
template <int QK, int V>
__global__ void __launch_bounds__(threads)
    key_gradient_kernel(backward_operands bo, attention_result dk, attention_result d_rope,
                        attention_result dv) {
  constexpr int step = query_step<QK, V>;
  extern __shared__ __align__(128) unsigned char shared[];
  const key_smem<QK, V> at;
  const operands& o = bo.in;
  auto* ks = reinterpret_cast<bf16*>(shared + at.k);
  auto* vs = reinterpret_cast<bf16*>(shared + at.v);
  auto* qs = reinterpret_cast<bf16*>(shared + at.q);
  auto* dos = reinterpret_cast<bf16*>(shared + at.d_out);
  auto* lse_s = reinterpret_cast<float*>(shared + at.lse);
  auto* delta_s = reinterpret_cast<float*>(shared + at.delta);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.x) * block_rows;
  const std::int64_t first = k0 + warp * 16;  // the warp's first key
  const std::int64_t keys[2] = {first + lane / 4, first + lane / 4 + 8};
  const float scale = o.p.scale * log2e;
  load_keys<QK, block_rows>(ks, o, b, h, k0);
  load_tile<block_rows>(vs, ld_of<V>, o.v, b, h, k0, length, 0, V);
  float dk_acc[QK / 8][4], dv_acc[V / 8][4];
#pragma unroll
  for (int n = 0; n < QK / 8; ++n) dk_acc[n][0] = dk_acc[n][1] = dk_acc[n][2] = dk_acc[n][3] = 0;
#pragma unroll
  for (int n = 0; n < V / 8; ++n) dv_acc[n][0] = dv_acc[n][1] = dv_acc[n][2] = dv_acc[n][3] = 0;
  const std::int64_t slice = (b * o.p.heads + h) * length;
  for (std::int64_t q0 = k0; q0 < length; q0 += step) {
    __syncthreads();
    load_tile<step>(qs, ld_of<QK>, o.q, b, h, q0, length, 0, QK);
    load_tile<step>(dos, ld_of<V>, bo.d_out, b, h, q0, length, 0, V);
    for (int r = threadIdx.x; r < step; r += threads) {
      const std::int64_t i = q0 + r;
      lse_s[r] = i < length ? bo.lse[slice + i] * log2e : 0.0f;
      delta_s[r] = i < length ? bo.delta[slice + i] : 0.0f;
    }
    __syncthreads();
    if (q0 + step - 1 < first) continue;  // every query of the step is before the warp's keys
    float p[step / 8][4], ds[step / 8][4];
    scores<QK, step>(p, ks, warp * 16, qs);   // S^T = K Q^T
    scores<V, step>(ds, vs, warp * 16, dos);  // dP^T = V dO^T
#pragma unroll
    for (int n = 0; n < step / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ii = n * 8 + lane % 4 * 2 + e % 2;
        const std::int64_t i = q0 + ii;
        float probability = 0.0f, gradient = 0.0f;
        if (i < length && keys[e / 2] <= i) {
          probability = exp2f(p[n][e] * scale - lse_s[ii]);
          gradient = probability * (ds[n][e] - delta_s[ii]);
        }
        p[n][e] = probability;
        ds[n][e] = gradient;
      }
    accumulate<step, V>(dv_acc, p, dos);   // dV += P^T dO
    accumulate<step, QK>(dk_acc, ds, qs);  // dK += dS^T Q
  }
  write_rows<V>(dv_acc, 1.0f, dv, attention_result{}, V, b, h, keys, length);
  write_rows<QK>(dk_acc, o.p.scale, dk, d_rope, QK - static_cast<int>(o.p.rope_dim), b, h, keys,
                 length);
}

template <int QK, int V>
struct query_smem {
  std::size_t q, d_out, k, v, bytes;
  __host__ __device__ query_smem() {
    layout l;
    q = l.take(block_rows * ld_of<QK> * 2);
    d_out = l.take(block_rows * ld_of<V> * 2);
    k = l.take(block_rows * ld_of<QK> * 2);
    v = l.take(block_rows * ld_of<V> * 2);
    bytes = l.bytes;
  }
};

// One block per 64 queries: dQ over every key tile they see.
template <int QK, int V>
__global__ void __launch_bounds__(threads)
    query_gradient_kernel(backward_operands bo, attention_result dq) {
  extern __shared__ __align__(128) unsigned char shared[];
  const query_smem<QK, V> at;
  const operands& o = bo.in;
  auto* qs = reinterpret_cast<bf16*>(shared + at.q);
  auto* dos = reinterpret_cast<bf16*>(shared + at.d_out);
  auto* ks = reinterpret_cast<bf16*>(shared + at.k);
  auto* vs = reinterpret_cast<bf16*>(shared + at.v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t q0 = static_cast<std::int64_t>(gridDim.x - 1 - blockIdx.x) * block_rows;
  const std::int64_t first = q0 + warp * 16;
  const std::int64_t rows[2] = {first + lane / 4, first + lane / 4 + 8};
  const float scale = o.p.scale * log2e;
  load_tile<block_rows>(qs, ld_of<QK>, o.q, b, h, q0, length, 0, QK);
  load_tile<block_rows>(dos, ld_of<V>, bo.d_out, b, h, q0, length, 0, V);
  const std::int64_t slice = (b * o.p.heads + h) * length;
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
  for (std::int64_t k0 = 0; k0 < key_end; k0 += block_rows) {
    __syncthreads();
    load_keys<QK, block_rows>(ks, o, b, h, k0);
    load_tile<block_rows>(vs, ld_of<V>, o.v, b, h, k0, length, 0, V);
    __syncthreads();
    if (k0 > first + 15) continue;
    float s[block_rows / 8][4], dp[block_rows / 8][4];
    scores<QK, block_rows>(s, qs, warp * 16, ks);   // S = Q K^T
    scores<V, block_rows>(dp, dos, warp * 16, vs);  // dP = dO V^T
#pragma unroll
    for (int n = 0; n < block_rows / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const std::int64_t j = k0 + n * 8 + lane % 4 * 2 + e % 2;
        float gradient = 0.0f;
        if (rows[r] < length && j <= rows[r]) {
          const float probability = exp2f(s[n][e] * scale - lse_r[r]);
          gradient = probability * (dp[n][e] - delta_r[r]);
        }
        s[n][e] = gradient;
      }
    accumulate<block_rows, QK>(dq_acc, s, ks);  // dQ += dS K
  }
  write_rows<QK>(dq_acc, o.p.scale, dq, attention_result{}, QK, b, h, rows, length);
}

// ---- launch ----------------------------------------------------------------------------------

dim3 grid_of(const attention_problem& p) {
  return dim3(blocks_for(p.length, block_rows), static_cast<unsigned>(p.heads),
              static_cast<unsigned>(p.batch));
}

/// Raises a kernel's dynamic shared memory limit once per device.
template <class Kernel>
void allow(Kernel kernel, std::size_t bytes) {
  static std::mutex guard;
  static std::set<std::pair<int, const void*>> done;
  int ordinal = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&ordinal));
  std::lock_guard lock(guard);
  if (!done.insert({ordinal, reinterpret_cast<const void*>(kernel)}).second) return;
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes)));
}

template <int QK, int V>
void forward(const attention_problem& p, const operands& o, attention_result out, float* lse,
             cudaStream_t stream) {
  const std::size_t bytes = forward_smem<QK, V>().bytes;
  allow(forward_kernel<QK, V>, bytes);
  forward_kernel<QK, V><<<grid_of(p), threads, bytes, stream>>>(o, out, lse);
  TROUPE_CUDA_LAUNCHED();
}

template <int QK, int V>
void backward(const attention_problem& p, const backward_operands& bo, attention_result dq,
              attention_result dk, attention_result d_rope, attention_result dv,
              cudaStream_t stream) {
  const std::size_t key_bytes = key_smem<QK, V>().bytes;
  allow(key_gradient_kernel<QK, V>, key_bytes);
  key_gradient_kernel<QK, V><<<grid_of(p), threads, key_bytes, stream>>>(bo, dk, d_rope, dv);
  TROUPE_CUDA_LAUNCHED();
  const std::size_t query_bytes = query_smem<QK, V>().bytes;
  allow(query_gradient_kernel<QK, V>, query_bytes);
  query_gradient_kernel<QK, V><<<grid_of(p), threads, query_bytes, stream>>>(bo, dq);
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
  // rope_dim % 4: the tiles are loaded four floats at a time, the rope key's from its own row.
  return built && p.rope_dim >= 0 && p.rope_dim < p.qk_dim && p.rope_dim % 4 == 0 && p.batch >= 0 &&
         p.heads >= 0 && p.length >= 0 && p.batch <= 65535 && p.heads <= 65535;
}

}  // namespace

bool attention_bf16_supported(const attention_problem& problem) {
  return supported(problem);
}

void attention_forward_bf16(const attention_problem& problem, attention_operand q,
                            attention_operand k, attention_operand key_rope, attention_operand v,
                            attention_result o, float* lse, void* stream) {
  if (!supported(problem)) return attention_forward(problem, q, k, key_rope, v, o, lse, stream);
  if (problem.batch * problem.heads * problem.length == 0) return;
  const operands in{problem, q, k, key_rope, v};
  with_sizes(problem,
             [&]<int QK, int V>() { forward<QK, V>(problem, in, o, lse, as_stream(stream)); });
}

void attention_backward_bf16(const attention_problem& problem, attention_operand q,
                             attention_operand k, attention_operand key_rope, attention_operand v,
                             attention_operand o, attention_operand d_o, const float* lse,
                             attention_result dq, attention_result dk, attention_result d_key_rope,
                             attention_result dv, float* scratch, void* stream) {
  if (!supported(problem))
    return attention_backward(problem, q, k, key_rope, v, o, d_o, lse, dq, dk, d_key_rope, dv,
                              scratch, stream);
  require(problem.rope_dim == 0 || d_key_rope.data != nullptr, "attention_backward_bf16",
          "a rope key needs a tensor for its gradient");
  const std::int64_t rows = attention_backward_scratch(problem);
  if (rows == 0) return;
  flash::launch_delta(problem, o, d_o, scratch, stream);
  const backward_operands bo{operands{problem, q, k, key_rope, v}, d_o, lse, scratch};
  with_sizes(problem, [&]<int QK, int V>() {
    backward<QK, V>(problem, bo, dq, dk, d_key_rope, dv, as_stream(stream));
  });
}

}  // namespace troupe::kernels::cuda
