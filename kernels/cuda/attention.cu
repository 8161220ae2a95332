#include <cstddef>
#include <mutex>
#include <set>

#include "kernels/cuda/attention.cuh"

namespace troupe::kernels::cuda {

namespace {

using namespace flash;

// NOTES: a block owns a tile of 16 rows (queries in forward and dQ, keys in dK/dV), 8 threads
// per row; each thread keeps every 8th column of its row's accumulator in registers (up to
// 256 / 8 = 32). Tiles of the other operand pass through shared memory, rows padded by one
// float so the 8 rows a warp reads at once fall in different banks. FP32 on the CUDA cores: this
// is the parity path (the same arithmetic as the CPU, reordered), not the tensor-core one.
constexpr int tile_rows = 16;
constexpr int lanes = 8;
constexpr int threads = tile_rows * lanes;
constexpr int forward_keys = 32;  // keys per tile in forward
constexpr int slots = static_cast<int>(max_attention_head_dim) / lanes;

// Rows [row0, row0 + count) of x's (b, h) slice, columns [0, width), into shared[r * ld + col0 +
// c]; rows past the sequence read as zeros.
__device__ void load_rows(float* shared, int ld, const attention_operand& x, std::int64_t b,
                          std::int64_t h, std::int64_t row0, int count, std::int64_t length,
                          int col0, int width) {
  for (int index = threadIdx.x; index < count * width; index += blockDim.x) {
    const int r = index / width, c = index % width;
    const std::int64_t row = row0 + r;
    shared[r * ld + col0 + c] = row < length ? row_of(x, b, h, row)[c] : 0.0f;
  }
}

__device__ void load_keys(float* shared, int ld, const operands& o, std::int64_t b, std::int64_t h,
                          std::int64_t row0, int count) {
  const int nope = static_cast<int>(o.p.qk_dim - o.p.rope_dim);
  load_rows(shared, ld, o.k, b, h, row0, count, o.p.length, 0, nope);
  if (o.p.rope_dim > 0)
    load_rows(shared, ld, o.rope, b, h, row0, count, o.p.length, nope,
              static_cast<int>(o.p.rope_dim));
}

__device__ inline float dot(const float* a, const float* b, int n) {
  float sum = 0.0f;
  for (int d = 0; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// Reductions over the 8 lanes of one row (aligned groups of 8 within a warp).
__device__ inline float row_max(float value) {
  for (int offset = lanes / 2; offset > 0; offset /= 2)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}
__device__ inline float row_sum(float value) {
  for (int offset = lanes / 2; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__global__ void forward_kernel(operands o, attention_result out, float* lse) {
  extern __shared__ float shared[];
  const int qk = static_cast<int>(o.p.qk_dim), vd = static_cast<int>(o.p.v_dim);
  const int ldq = qk + 1, ldv = vd + 1, ldp = forward_keys + 1;
  float* qs = shared;
  float* ks = qs + tile_rows * ldq;
  float* vs = ks + forward_keys * ldq;
  float* ps = vs + forward_keys * ldv;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * tile_rows;
  const int row = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const std::int64_t i = q0 + row;
  load_rows(qs, ldq, o.q, b, h, q0, tile_rows, length, 0, qk);
  float acc[slots];
#pragma unroll
  for (int w = 0; w < slots; ++w) acc[w] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const std::int64_t key_end = min(q0 + tile_rows, length);
  for (std::int64_t k0 = 0; k0 < key_end; k0 += forward_keys) {
    __syncthreads();
    load_keys(ks, ldq, o, b, h, k0, forward_keys);
    load_rows(vs, ldv, o.v, b, h, k0, forward_keys, length, 0, vd);
    __syncthreads();
    float s[forward_keys / lanes];
    float tile_max = -INFINITY;
#pragma unroll
    for (int u = 0; u < forward_keys / lanes; ++u) {
      const int jj = lane + lanes * u;
      const std::int64_t j = k0 + jj;
      s[u] = j <= i && i < length ? o.p.scale * dot(qs + row * ldq, ks + jj * ldq, qk) : -INFINITY;
      tile_max = fmaxf(tile_max, s[u]);
    }
    const float m_new = fmaxf(m, row_max(tile_max));
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing to see yet
    const float correction = expf(m - m_use);
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < forward_keys / lanes; ++u) {
      const float p = expf(s[u] - m_use);
      ps[row * ldp + lane + lanes * u] = p;
      sum += p;
    }
    l = l * correction + row_sum(sum);
    m = m_new;
    __syncwarp();
#pragma unroll
    for (int w = 0; w < slots; ++w) {
      const int c = lane + lanes * w;
      if (c >= vd) break;
      float a = acc[w] * correction;
      for (int jj = 0; jj < forward_keys; ++jj) a += ps[row * ldp + jj] * vs[jj * ldv + c];
      acc[w] = a;
    }
    __syncwarp();
  }
  if (i >= length) return;
  float* target = out.data + b * out.batch_stride + h * out.head_stride + i * out.row_stride;
  const float inverse = 1.0f / l;
#pragma unroll
  for (int w = 0; w < slots; ++w) {
    const int c = lane + lanes * w;
    if (c >= vd) break;
    target[c] = acc[w] * inverse;
  }
  if (lane == 0) lse[(b * o.p.heads + h) * length + i] = m + logf(l);
}

// One block per tile of 16 keys: dK and dV over every query tile that sees them.
__global__ void key_gradient_kernel(backward_operands bo, attention_result dk,
                                    attention_result d_rope, attention_result dv) {
  extern __shared__ float shared[];
  const operands& o = bo.in;
  const int qk = static_cast<int>(o.p.qk_dim), vd = static_cast<int>(o.p.v_dim);
  const int ldq = qk + 1, ldv = vd + 1, ldp = tile_rows + 1;
  float* ks = shared;
  float* vs = ks + tile_rows * ldq;
  float* qs = vs + tile_rows * ldv;
  float* dos = qs + tile_rows * ldq;
  float* pt = dos + tile_rows * ldv;
  float* dst = pt + tile_rows * ldp;
  float* lse_s = dst + tile_rows * ldp;
  float* delta_s = lse_s + tile_rows;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.x) * tile_rows;
  const int row = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const std::int64_t j = k0 + row;
  load_keys(ks, ldq, o, b, h, k0, tile_rows);
  load_rows(vs, ldv, o.v, b, h, k0, tile_rows, length, 0, vd);
  float dk_acc[slots], dv_acc[slots];
#pragma unroll
  for (int w = 0; w < slots; ++w) dk_acc[w] = dv_acc[w] = 0.0f;
  const std::int64_t slice = (b * o.p.heads + h) * length;
  for (std::int64_t q0 = k0; q0 < length; q0 += tile_rows) {
    __syncthreads();
    load_rows(qs, ldq, o.q, b, h, q0, tile_rows, length, 0, qk);
    load_rows(dos, ldv, bo.d_out, b, h, q0, tile_rows, length, 0, vd);
    if (threadIdx.x < tile_rows) {
      const std::int64_t i = q0 + threadIdx.x;
      lse_s[threadIdx.x] = i < length ? bo.lse[slice + i] : 0.0f;
      delta_s[threadIdx.x] = i < length ? bo.delta[slice + i] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < tile_rows / lanes; ++u) {
      const int ii = lane + lanes * u;
      const std::int64_t i = q0 + ii;
      float p = 0.0f, ds = 0.0f;
      if (i < length && j < length && j <= i) {
        p = expf(o.p.scale * dot(qs + ii * ldq, ks + row * ldq, qk) - lse_s[ii]);
        ds = p * (dot(dos + ii * ldv, vs + row * ldv, vd) - delta_s[ii]);
      }
      pt[row * ldp + ii] = p;
      dst[row * ldp + ii] = ds;
    }
    __syncwarp();
#pragma unroll
    for (int w = 0; w < slots; ++w) {
      const int c = lane + lanes * w;
      if (c < vd) {
        float a = dv_acc[w];
        for (int ii = 0; ii < tile_rows; ++ii) a += pt[row * ldp + ii] * dos[ii * ldv + c];
        dv_acc[w] = a;
      }
      if (c < qk) {
        float a = dk_acc[w];
        for (int ii = 0; ii < tile_rows; ++ii) a += dst[row * ldp + ii] * qs[ii * ldq + c];
        dk_acc[w] = a;
      }
    }
  }
  if (j >= length) return;
  const int nope = static_cast<int>(o.p.qk_dim - o.p.rope_dim);
  float* dv_row = dv.data + b * dv.batch_stride + h * dv.head_stride + j * dv.row_stride;
  float* dk_row = dk.data + b * dk.batch_stride + h * dk.head_stride + j * dk.row_stride;
  float* rope_row = d_rope.data != nullptr ? d_rope.data + b * d_rope.batch_stride +
                                                 h * d_rope.head_stride + j * d_rope.row_stride
                                           : nullptr;
#pragma unroll
  for (int w = 0; w < slots; ++w) {
    const int c = lane + lanes * w;
    if (c < vd) dv_row[c] = dv_acc[w];
    if (c < nope)
      dk_row[c] = o.p.scale * dk_acc[w];
    else if (c < qk)
      rope_row[c - nope] = o.p.scale * dk_acc[w];
  }
}

// One block per tile of 16 queries: dQ over every key tile they see.
__global__ void query_gradient_kernel(backward_operands bo, attention_result dq) {
  extern __shared__ float shared[];
  const operands& o = bo.in;
  const int qk = static_cast<int>(o.p.qk_dim), vd = static_cast<int>(o.p.v_dim);
  const int ldq = qk + 1, ldv = vd + 1, ldp = tile_rows + 1;
  float* qs = shared;
  float* dos = qs + tile_rows * ldq;
  float* ks = dos + tile_rows * ldv;
  float* vs = ks + tile_rows * ldq;
  float* dss = vs + tile_rows * ldv;
  const std::int64_t b = blockIdx.z, h = blockIdx.y, length = o.p.length;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * tile_rows;
  const int row = threadIdx.x / lanes, lane = threadIdx.x % lanes;
  const std::int64_t i = q0 + row;
  load_rows(qs, ldq, o.q, b, h, q0, tile_rows, length, 0, qk);
  load_rows(dos, ldv, bo.d_out, b, h, q0, tile_rows, length, 0, vd);
  const std::int64_t slice = (b * o.p.heads + h) * length;
  const float lse_i = i < length ? bo.lse[slice + i] : 0.0f;
  const float delta_i = i < length ? bo.delta[slice + i] : 0.0f;
  float acc[slots];
#pragma unroll
  for (int w = 0; w < slots; ++w) acc[w] = 0.0f;
  const std::int64_t key_end = min(q0 + tile_rows, length);
  for (std::int64_t k0 = 0; k0 < key_end; k0 += tile_rows) {
    __syncthreads();
    load_keys(ks, ldq, o, b, h, k0, tile_rows);
    load_rows(vs, ldv, o.v, b, h, k0, tile_rows, length, 0, vd);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < tile_rows / lanes; ++u) {
      const int jj = lane + lanes * u;
      const std::int64_t j = k0 + jj;
      float ds = 0.0f;
      if (i < length && j <= i) {
        const float p = expf(o.p.scale * dot(qs + row * ldq, ks + jj * ldq, qk) - lse_i);
        ds = p * (dot(dos + row * ldv, vs + jj * ldv, vd) - delta_i);
      }
      dss[row * ldp + jj] = ds;
    }
    __syncwarp();
#pragma unroll
    for (int w = 0; w < slots; ++w) {
      const int c = lane + lanes * w;
      if (c >= qk) break;
      float a = acc[w];
      for (int jj = 0; jj < tile_rows; ++jj) a += dss[row * ldp + jj] * ks[jj * ldq + c];
      acc[w] = a;
    }
    __syncwarp();
  }
  if (i >= length) return;
  float* target = dq.data + b * dq.batch_stride + h * dq.head_stride + i * dq.row_stride;
#pragma unroll
  for (int w = 0; w < slots; ++w) {
    const int c = lane + lanes * w;
    if (c >= qk) break;
    target[c] = o.p.scale * acc[w];
  }
}

std::size_t forward_shared_bytes(const attention_problem& p) {
  const std::int64_t ldq = p.qk_dim + 1, ldv = p.v_dim + 1;
  return static_cast<std::size_t>(tile_rows * ldq + forward_keys * ldq + forward_keys * ldv +
                                  tile_rows * (forward_keys + 1)) *
         sizeof(float);
}

std::size_t key_gradient_shared_bytes(const attention_problem& p) {
  const std::int64_t ldq = p.qk_dim + 1, ldv = p.v_dim + 1;
  return static_cast<std::size_t>(2 * tile_rows * ldq + 2 * tile_rows * ldv +
                                  2 * tile_rows * (tile_rows + 1) + 2 * tile_rows) *
         sizeof(float);
}

std::size_t query_gradient_shared_bytes(const attention_problem& p) {
  const std::int64_t ldq = p.qk_dim + 1, ldv = p.v_dim + 1;
  return static_cast<std::size_t>(2 * tile_rows * ldq + 2 * tile_rows * ldv +
                                  tile_rows * (tile_rows + 1)) *
         sizeof(float);
}

/// The largest any kernel asks for (head dims of 256): set once per device for all three.
constexpr int max_shared_bytes =
    (tile_rows * 257 + forward_keys * 257 * 2 + tile_rows * (forward_keys + 1)) * 4;

void allow_shared_memory() {
  static std::mutex guard;
  static std::set<int> configured;
  int ordinal = 0;
  TROUPE_CUDA_CHECK(cudaGetDevice(&ordinal));
  std::lock_guard lock(guard);
  if (!configured.insert(ordinal).second) return;
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(
      forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_shared_bytes));
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(
      key_gradient_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_shared_bytes));
  TROUPE_CUDA_CHECK(cudaFuncSetAttribute(
      query_gradient_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_shared_bytes));
}

void check_problem(const attention_problem& p, const char* kernel) {
  require(p.batch >= 0 && p.heads >= 0 && p.length >= 0, kernel, "negative sizes");
  require(p.batch <= 65535 && p.heads <= 65535, kernel, "more than 65,535 sequences or heads");
  require(p.qk_dim > 0 && p.qk_dim <= max_attention_head_dim && p.v_dim > 0 &&
              p.v_dim <= max_attention_head_dim,
          kernel, "head dimensions must be in [1, 256]");
  require(p.rope_dim >= 0 && p.rope_dim < p.qk_dim, kernel,
          "the rope part must be narrower than the key");
}

dim3 grid_of(const attention_problem& p) {
  return dim3(blocks_for(p.length, tile_rows), static_cast<unsigned>(p.heads),
              static_cast<unsigned>(p.batch));
}

// delta[b, h, i] = dO_i . O_i, one warp per row.
__global__ void delta_kernel(attention_problem p, attention_operand out, attention_operand d_out,
                             float* delta) {
  const std::int64_t rows = p.batch * p.heads * p.length;
  const std::int64_t index =
      blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (index >= rows) return;
  const std::int64_t i = index % p.length, h = (index / p.length) % p.heads,
                     b = index / (p.length * p.heads);
  const float* o = row_of(out, b, h, i);
  const float* d = row_of(d_out, b, h, i);
  float sum = 0.0f;
  for (std::int64_t c = threadIdx.x % 32; c < p.v_dim; c += 32) sum += o[c] * d[c];
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) delta[index] = sum;
}

}  // namespace

void flash::launch_delta(const attention_problem& p, attention_operand o, attention_operand d_o,
                         float* delta, void* stream) {
  const std::int64_t rows = p.batch * p.heads * p.length;
  if (rows == 0) return;
  delta_kernel<<<blocks_for(rows, 8), 256, 0, as_stream(stream)>>>(p, o, d_o, delta);
  TROUPE_CUDA_LAUNCHED();
}

void attention_forward(const attention_problem& problem, attention_operand q, attention_operand k,
                       attention_operand key_rope, attention_operand v, attention_result o,
                       float* lse, void* stream) {
  check_problem(problem, "attention_forward");
  if (problem.batch * problem.heads * problem.length == 0) return;
  allow_shared_memory();
  forward_kernel<<<grid_of(problem), threads, forward_shared_bytes(problem), as_stream(stream)>>>(
      operands{problem, q, k, key_rope, v}, o, lse);
  TROUPE_CUDA_LAUNCHED();
}

std::int64_t attention_backward_scratch(const attention_problem& problem) {
  return problem.batch * problem.heads * problem.length;
}

void attention_backward(const attention_problem& problem, attention_operand q, attention_operand k,
                        attention_operand key_rope, attention_operand v, attention_operand o,
                        attention_operand d_o, const float* lse, attention_result dq,
                        attention_result dk, attention_result d_key_rope, attention_result dv,
                        float* scratch, void* stream) {
  check_problem(problem, "attention_backward");
  require(problem.rope_dim == 0 || d_key_rope.data != nullptr, "attention_backward",
          "a rope key needs a tensor for its gradient");
  const std::int64_t rows = attention_backward_scratch(problem);
  if (rows == 0) return;
  allow_shared_memory();
  flash::launch_delta(problem, o, d_o, scratch, stream);
  const backward_operands bo{operands{problem, q, k, key_rope, v}, d_o, lse, scratch};
  key_gradient_kernel<<<grid_of(problem), threads, key_gradient_shared_bytes(problem),
                        as_stream(stream)>>>(bo, dk, d_key_rope, dv);
  TROUPE_CUDA_LAUNCHED();
  query_gradient_kernel<<<grid_of(problem), threads, query_gradient_shared_bytes(problem),
                          as_stream(stream)>>>(bo, dq);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
