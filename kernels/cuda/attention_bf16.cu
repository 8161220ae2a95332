#include <cuda_bf16.h>
#include <mma.h>

#include <mutex>
#include <set>
#include <utility>

#include "kernels/cuda/attention.cuh"

namespace troupe::kernels::cuda {

namespace {

// NOTES: the BF16 flash attention of model.precision = "bf16", on the tensor cores through WMMA
// (16 x 16 x 16, FP32 accumulation). The algorithm is the FP32 kernels' (attention.cu): forward
// keeps the per-row log-sum-exp, backward recomputes the probabilities, dK/dV per key tile and
// dQ per query tile, so memory stays linear in the sequence. A block owns 64 rows (queries, or
// keys in dK/dV), a warp 16 of them, and walks the other side in tiles of 64. Each product goes
// through shared memory: operands rounded to BF16 as they are loaded (Q, K, V, dO) or written
// (P, dS), products accumulated in FP32 fragments, the softmax and its gradient in FP32 on the
// scores a warp stores back (two lanes per row, 32 columns each). WMMA does not say which lane
// holds which element of a fragment, so the forward's running output is rescaled in shared
// memory (O = O * correction + P V) rather than in registers. Head sizes are template
// parameters (the fragment arrays are sized by them); other sizes use the FP32 kernels.
using namespace nvcuda;
using namespace flash;

constexpr int block_rows = 64;  // rows a block owns
constexpr int tile = 64;        // rows of the other side per step
constexpr int warps = 4;        // 16 rows each
constexpr int threads = warps * 32;
constexpr int ld_scores = tile + 4;  // float [16][68]
constexpr int ld_probs = tile + 8;   // bf16 [16][72]

template <int D>
constexpr int ld_of = D + 8;  // bf16 rows: 16-byte multiples, banks spread

using fragment_a = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using fragment_b_rows = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major>;
using fragment_b_cols = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major>;
using fragment_c = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

/// Rows [row0, row0 + 64) of x's (b, h) slice, columns [0, width), into s[r * ld + col0 + c] as
/// BF16; rows past the sequence read as zeros.
__device__ void load_rows(__nv_bfloat16* s, int ld, const attention_operand& x, std::int64_t b,
                          std::int64_t h, std::int64_t row0, std::int64_t length, int col0,
                          int width) {
  for (int index = threadIdx.x; index < block_rows * width; index += threads) {
    const int r = index / width, c = index % width;
    const std::int64_t row = row0 + r;
    s[r * ld + col0 + c] = __float2bfloat16_rn(row < length ? row_of(x, b, h, row)[c] : 0.0f);
  }
}

/// Keys [row0, row0 + 64): the nope columns from k, the rope columns from the shared rope key.
template <int QK>
__device__ void load_keys(__nv_bfloat16* s, const operands& o, std::int64_t b, std::int64_t h,
                          std::int64_t row0) {
  const int nope = QK - static_cast<int>(o.p.rope_dim);
  load_rows(s, ld_of<QK>, o.k, b, h, row0, o.p.length, 0, nope);
  if (o.p.rope_dim > 0)
    load_rows(s, ld_of<QK>, o.rope, b, h, row0, o.p.length, nope, static_cast<int>(o.p.rope_dim));
}

/// out[16][64] (float, ld_scores) = A[16][D] B[64][D]^T, both row-major BF16 (one warp).
template <int D>
__device__ void product_transposed(float* out, const __nv_bfloat16* a, const __nv_bfloat16* b) {
  fragment_c acc[tile / 16];
#pragma unroll
  for (int n = 0; n < tile / 16; ++n) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
  for (int d = 0; d < D; d += 16) {
    fragment_a fa;
    wmma::load_matrix_sync(fa, a + d, ld_of<D>);
#pragma unroll
    for (int n = 0; n < tile / 16; ++n) {
      fragment_b_cols fb;  // B^T(d, key) = b[key][d]
      wmma::load_matrix_sync(fb, b + n * 16 * ld_of<D> + d, ld_of<D>);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
#pragma unroll
  for (int n = 0; n < tile / 16; ++n)
    wmma::store_matrix_sync(out + n * 16, acc[n], ld_scores, wmma::mem_row_major);
}

/// acc[16][D] += P[16][64] (BF16, ld_probs) B[64][D] (row-major BF16) (one warp).
template <int D>
__device__ void accumulate(fragment_c (&acc)[D / 16], const __nv_bfloat16* p,
                           const __nv_bfloat16* b) {
#pragma unroll
  for (int k = 0; k < tile; k += 16) {
    fragment_a fa;
    wmma::load_matrix_sync(fa, p + k, ld_probs);
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      fragment_b_rows fb;
      wmma::load_matrix_sync(fb, b + k * ld_of<D> + n * 16, ld_of<D>);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

/// Stores a warp's [16][D] fragments into `scratch` (float, ld D + 4) for row-wise writing.
template <int D>
__device__ void stage(float* scratch, const fragment_c (&acc)[D / 16]) {
#pragma unroll
  for (int n = 0; n < D / 16; ++n)
    wmma::store_matrix_sync(scratch + n * 16, acc[n], D + 4, wmma::mem_row_major);
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

constexpr int widest(int a, int b) {
  return a > b ? a : b;
}

// ---- forward ---------------------------------------------------------------------------------

template <int QK, int V>
struct forward_smem {
  std::size_t q, k, v, scores, probs, out, partial, bytes;
  __host__ __device__ forward_smem() {
    layout l;
    q = l.take(block_rows * ld_of<QK> * 2);
    k = l.take(tile * ld_of<QK> * 2);
    v = l.take(tile * ld_of<V> * 2);
    scores = l.take(warps * 16 * ld_scores * 4);
    probs = l.take(warps * 16 * ld_probs * 2);
    out = l.take(warps * 16 * (V + 4) * 4);
    partial = l.take(warps * 16 * (V + 4) * 4);
    bytes = l.bytes;
  }
};

template <int QK, int V>
__global__ void __launch_bounds__(threads)
    forward_kernel(operands o, attention_result out, float* lse) {
  extern __shared__ __align__(128) unsigned char shared[];
  const forward_smem<QK, V> at;
  auto* qs = reinterpret_cast<__nv_bfloat16*>(shared + at.q);
  auto* ks = reinterpret_cast<__nv_bfloat16*>(shared + at.k);
  auto* vs = reinterpret_cast<__nv_bfloat16*>(shared + at.v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = reinterpret_cast<float*>(shared + at.scores) + warp * 16 * ld_scores;
  auto* probs = reinterpret_cast<__nv_bfloat16*>(shared + at.probs) + warp * 16 * ld_probs;
  float* acc = reinterpret_cast<float*>(shared + at.out) + warp * 16 * (V + 4);
  float* partial = reinterpret_cast<float*>(shared + at.partial) + warp * 16 * (V + 4);

  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * block_rows;
  const std::int64_t first = q0 + warp * 16;  // the warp's first query
  const int row = lane / 2, half = lane % 2;  // two lanes per row, 32 columns each
  const std::int64_t i = first + row;
  load_rows(qs, ld_of<QK>, o.q, b, h, q0, length, 0, QK);
  for (int c = half * (V / 2); c < (half + 1) * (V / 2); ++c) acc[row * (V + 4) + c] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const std::int64_t key_end = min(q0 + block_rows, length);
  for (std::int64_t k0 = 0; k0 < key_end; k0 += tile) {
    __syncthreads();
    load_keys<QK>(ks, o, b, h, k0);
    load_rows(vs, ld_of<V>, o.v, b, h, k0, length, 0, V);
    __syncthreads();
    if (k0 > first + 15) continue;  // every key of the tile is after the warp's queries
    product_transposed<QK>(scores, qs + warp * 16 * ld_of<QK>, ks);
    __syncwarp();
    float s[32], tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int jj = half * 32 + c;
      const std::int64_t j = k0 + jj;
      s[c] = j <= i && i < length ? o.p.scale * scores[row * ld_scores + jj] : -INFINITY;
      tile_max = fmaxf(tile_max, s[c]);
    }
    const float m_new = fmaxf(m, fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1)));
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing to see yet
    const float correction = expf(m - m_use);
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const float p = expf(s[c] - m_use);
      probs[row * ld_probs + half * 32 + c] = __float2bfloat16_rn(p);
      sum += p;
    }
    l = l * correction + sum + __shfl_xor_sync(0xffffffffu, sum, 1);
    m = m_new;
    __syncwarp();
    fragment_c pv[V / 16];
#pragma unroll
    for (int n = 0; n < V / 16; ++n) wmma::fill_fragment(pv[n], 0.0f);
    accumulate<V>(pv, probs, vs);
    stage<V>(partial, pv);
    __syncwarp();
    for (int c = half * (V / 2); c < (half + 1) * (V / 2); ++c)
      acc[row * (V + 4) + c] = acc[row * (V + 4) + c] * correction + partial[row * (V + 4) + c];
    __syncwarp();
  }
  if (i >= length) return;
  float* target = out.data + b * out.batch_stride + h * out.head_stride + i * out.row_stride;
  const float inverse = 1.0f / l;
  for (int c = half * (V / 2); c < (half + 1) * (V / 2); ++c)
    target[c] = acc[row * (V + 4) + c] * inverse;
  if (half == 0) lse[(b * o.p.heads + h) * length + i] = m + logf(l);
}

// ---- backward --------------------------------------------------------------------------------

template <int QK, int V>
struct key_smem {
  std::size_t k, v, q, d_out, lse, delta, scores, d_probs, probs, d_scores, scratch, bytes;
  __host__ __device__ key_smem() {
    layout l;
    k = l.take(block_rows * ld_of<QK> * 2);
    v = l.take(block_rows * ld_of<V> * 2);
    q = l.take(tile * ld_of<QK> * 2);
    d_out = l.take(tile * ld_of<V> * 2);
    lse = l.take(tile * 4);
    delta = l.take(tile * 4);
    scores = l.take(warps * 16 * ld_scores * 4);
    d_probs = l.take(warps * 16 * ld_scores * 4);
    probs = l.take(warps * 16 * ld_probs * 2);
    d_scores = l.take(warps * 16 * ld_probs * 2);
    scratch = l.take(warps * 16 * (widest(QK, V) + 4) * 4);
    bytes = l.bytes;
  }
};

// One block per 64 keys: dK and dV over every query tile that sees them.
template <int QK, int V>
__global__ void __launch_bounds__(threads)
    key_gradient_kernel(backward_operands bo, attention_result dk, attention_result d_rope,
                        attention_result dv) {
  extern __shared__ __align__(128) unsigned char shared[];
  const key_smem<QK, V> at;
  const operands& o = bo.in;
  auto* ks = reinterpret_cast<__nv_bfloat16*>(shared + at.k);
  auto* vs = reinterpret_cast<__nv_bfloat16*>(shared + at.v);
  auto* qs = reinterpret_cast<__nv_bfloat16*>(shared + at.q);
  auto* dos = reinterpret_cast<__nv_bfloat16*>(shared + at.d_out);
  float* lse_s = reinterpret_cast<float*>(shared + at.lse);
  float* delta_s = reinterpret_cast<float*>(shared + at.delta);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = reinterpret_cast<float*>(shared + at.scores) + warp * 16 * ld_scores;
  float* d_probs = reinterpret_cast<float*>(shared + at.d_probs) + warp * 16 * ld_scores;
  auto* probs = reinterpret_cast<__nv_bfloat16*>(shared + at.probs) + warp * 16 * ld_probs;
  auto* d_scores = reinterpret_cast<__nv_bfloat16*>(shared + at.d_scores) + warp * 16 * ld_probs;
  float* scratch = reinterpret_cast<float*>(shared + at.scratch) + warp * 16 * (widest(QK, V) + 4);

  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.x) * block_rows;
  const int row = lane / 2, half = lane % 2;
  const std::int64_t j = k0 + warp * 16 + row;  // the lane's key
  load_keys<QK>(ks, o, b, h, k0);
  load_rows(vs, ld_of<V>, o.v, b, h, k0, length, 0, V);
  fragment_c dk_acc[QK / 16], dv_acc[V / 16];
#pragma unroll
  for (int n = 0; n < QK / 16; ++n) wmma::fill_fragment(dk_acc[n], 0.0f);
#pragma unroll
  for (int n = 0; n < V / 16; ++n) wmma::fill_fragment(dv_acc[n], 0.0f);
  const std::int64_t slice = (b * o.p.heads + h) * length;
  for (std::int64_t q0 = k0; q0 < length; q0 += tile) {
    __syncthreads();
    load_rows(qs, ld_of<QK>, o.q, b, h, q0, length, 0, QK);
    load_rows(dos, ld_of<V>, bo.d_out, b, h, q0, length, 0, V);
    for (int r = threadIdx.x; r < tile; r += threads) {
      const std::int64_t i = q0 + r;
      lse_s[r] = i < length ? bo.lse[slice + i] : 0.0f;
      delta_s[r] = i < length ? bo.delta[slice + i] : 0.0f;
    }
    __syncthreads();
    product_transposed<QK>(scores, ks + warp * 16 * ld_of<QK>, qs);  // S^T = K Q^T
    product_transposed<V>(d_probs, vs + warp * 16 * ld_of<V>, dos);  // dP^T = V dO^T
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int ii = half * 32 + c;
      const std::int64_t i = q0 + ii;
      float p = 0.0f, ds = 0.0f;
      if (i < length && j <= i) {
        p = expf(o.p.scale * scores[row * ld_scores + ii] - lse_s[ii]);
        ds = p * (d_probs[row * ld_scores + ii] - delta_s[ii]);
      }
      probs[row * ld_probs + ii] = __float2bfloat16_rn(p);
      d_scores[row * ld_probs + ii] = __float2bfloat16_rn(ds);
    }
    __syncwarp();
    accumulate<V>(dv_acc, probs, dos);     // dV += P^T dO
    accumulate<QK>(dk_acc, d_scores, qs);  // dK += dS^T Q
  }
  const int nope = QK - static_cast<int>(o.p.rope_dim);
  stage<V>(scratch, dv_acc);
  __syncwarp();
  if (j < length) {
    float* dv_row = dv.data + b * dv.batch_stride + h * dv.head_stride + j * dv.row_stride;
    for (int c = half * (V / 2); c < (half + 1) * (V / 2); ++c)
      dv_row[c] = scratch[row * (V + 4) + c];
  }
  __syncwarp();
  stage<QK>(scratch, dk_acc);  // leading dimension QK + 4 (stage<V> used V + 4)
  __syncwarp();
  if (j < length) {
    float* dk_row = dk.data + b * dk.batch_stride + h * dk.head_stride + j * dk.row_stride;
    float* rope_row = d_rope.data != nullptr ? d_rope.data + b * d_rope.batch_stride +
                                                   h * d_rope.head_stride + j * d_rope.row_stride
                                             : nullptr;
    for (int c = half * (QK / 2); c < (half + 1) * (QK / 2); ++c) {
      const float value = o.p.scale * scratch[row * (QK + 4) + c];
      if (c < nope)
        dk_row[c] = value;
      else
        rope_row[c - nope] = value;
    }
  }
}

template <int QK, int V>
struct query_smem {
  std::size_t q, d_out, k, v, scores, d_probs, d_scores, scratch, bytes;
  __host__ __device__ query_smem() {
    layout l;
    q = l.take(block_rows * ld_of<QK> * 2);
    d_out = l.take(block_rows * ld_of<V> * 2);
    k = l.take(tile * ld_of<QK> * 2);
    v = l.take(tile * ld_of<V> * 2);
    scores = l.take(warps * 16 * ld_scores * 4);
    d_probs = l.take(warps * 16 * ld_scores * 4);
    d_scores = l.take(warps * 16 * ld_probs * 2);
    scratch = l.take(warps * 16 * (QK + 4) * 4);
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
  auto* qs = reinterpret_cast<__nv_bfloat16*>(shared + at.q);
  auto* dos = reinterpret_cast<__nv_bfloat16*>(shared + at.d_out);
  auto* ks = reinterpret_cast<__nv_bfloat16*>(shared + at.k);
  auto* vs = reinterpret_cast<__nv_bfloat16*>(shared + at.v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scores = reinterpret_cast<float*>(shared + at.scores) + warp * 16 * ld_scores;
  float* d_probs = reinterpret_cast<float*>(shared + at.d_probs) + warp * 16 * ld_scores;
  auto* d_scores = reinterpret_cast<__nv_bfloat16*>(shared + at.d_scores) + warp * 16 * ld_probs;
  float* scratch = reinterpret_cast<float*>(shared + at.scratch) + warp * 16 * (QK + 4);

  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * block_rows;
  const std::int64_t first = q0 + warp * 16;
  const int row = lane / 2, half = lane % 2;
  const std::int64_t i = first + row;
  load_rows(qs, ld_of<QK>, o.q, b, h, q0, length, 0, QK);
  load_rows(dos, ld_of<V>, bo.d_out, b, h, q0, length, 0, V);
  const std::int64_t slice = (b * o.p.heads + h) * length;
  const float lse_i = i < length ? bo.lse[slice + i] : 0.0f;
  const float delta_i = i < length ? bo.delta[slice + i] : 0.0f;
  fragment_c dq_acc[QK / 16];
#pragma unroll
  for (int n = 0; n < QK / 16; ++n) wmma::fill_fragment(dq_acc[n], 0.0f);
  const std::int64_t key_end = min(q0 + block_rows, length);
  for (std::int64_t k0 = 0; k0 < key_end; k0 += tile) {
    __syncthreads();
    load_keys<QK>(ks, o, b, h, k0);
    load_rows(vs, ld_of<V>, o.v, b, h, k0, length, 0, V);
    __syncthreads();
    if (k0 > first + 15) continue;
    product_transposed<QK>(scores, qs + warp * 16 * ld_of<QK>, ks);  // S = Q K^T
    product_transposed<V>(d_probs, dos + warp * 16 * ld_of<V>, vs);  // dP = dO V^T
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < 32; ++c) {
      const int jj = half * 32 + c;
      const std::int64_t j = k0 + jj;
      float ds = 0.0f;
      if (i < length && j <= i) {
        const float p = expf(o.p.scale * scores[row * ld_scores + jj] - lse_i);
        ds = p * (d_probs[row * ld_scores + jj] - delta_i);
      }
      d_scores[row * ld_probs + jj] = __float2bfloat16_rn(ds);
    }
    __syncwarp();
    accumulate<QK>(dq_acc, d_scores, ks);  // dQ += dS K
  }
  stage<QK>(scratch, dq_acc);
  __syncwarp();
  if (i >= length) return;
  float* target = dq.data + b * dq.batch_stride + h * dq.head_stride + i * dq.row_stride;
  for (int c = half * (QK / 2); c < (half + 1) * (QK / 2); ++c)
    target[c] = o.p.scale * scratch[row * (QK + 4) + c];
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
  return built && p.rope_dim >= 0 && p.rope_dim < p.qk_dim && p.batch >= 0 && p.heads >= 0 &&
         p.length >= 0 && p.batch <= 65535 && p.heads <= 65535;
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
