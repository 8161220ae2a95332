#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rmsnorm.hpp"

#include <initializer_list>
#include <type_traits>

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;
constexpr std::int64_t rows_per_block =
    8;  // rows whose weight gradient one block sums (more blocks than SMs)

constexpr int warps = threads / 32;

// One warp per row (8 per block): the sum of squares reduced with shuffles alone.
__global__ void rmsnorm_forward_kernel(const float* x, std::int64_t ldx, const float* weight,
                                       float* y, std::int64_t ldy, float* rstd, std::int64_t rows,
                                       std::int64_t dim, float eps) {
  const int lane = threadIdx.x % 32;
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(warps) + threadIdx.x / 32;
  if (row >= rows) return;
  const float* xr = x + row * ldx;
  float sum = 0.0f;
  for (std::int64_t i = lane; i < dim; i += 32) sum += xr[i] * xr[i];
  sum = warp_sum(sum);
  const float inverse = rsqrtf(sum / static_cast<float>(dim) + eps);
  float* yr = y + row * ldy;
  for (std::int64_t i = lane; i < dim; i += 32) yr[i] = weight[i] * (xr[i] * inverse);
  if (rstd != nullptr && lane == 0) rstd[row] = inverse;
}

// NOTES: the vector kernels below move float4s and keep a row in registers between its two
// passes (the forward's sum of squares and its output; the backward's dot product and dx); the
// scalar ones read each element twice, one float at a time, and the backward added every row's
// weight-gradient share into the block's partial in global memory: 162 us per medium-config call
// (8,192 x 2,048) against about 65 us of memory traffic. They run where every row and pointer is
// 16-byte aligned and a row fits the registers (dim a multiple of 4, at most 4,096).
constexpr int max_chunks = 32;  // float4s per lane (forward) or thread (backward) and row, at most

__device__ inline float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ inline void store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}

/// One warp per row, `Chunks` float4s per lane (quads beyond dim / 4 idle).
template <int Chunks>
__global__ void rmsnorm_forward_vec_kernel(const float* x, std::int64_t ldx, const float* weight,
                                           float* y, std::int64_t ldy, float* rstd,
                                           std::int64_t rows, std::int64_t dim, float eps) {
  const int lane = threadIdx.x % 32;
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(warps) + threadIdx.x / 32;
  if (row >= rows) return;
  const std::int64_t quads = dim / 4;
  const float* xr = x + row * ldx;
  float4 v[Chunks];
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const std::int64_t q = lane + 32 * c;
    v[c] = q < quads ? load4(xr + 4 * q) : float4{0, 0, 0, 0};
    sum += v[c].x * v[c].x + v[c].y * v[c].y + v[c].z * v[c].z + v[c].w * v[c].w;
  }
  sum = warp_sum(sum);
  const float inverse = rsqrtf(sum / static_cast<float>(dim) + eps);
  float* yr = y + row * ldy;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const std::int64_t q = lane + 32 * c;
    if (q >= quads) continue;
    const float4 w = load4(weight + 4 * q);
    store4(yr + 4 * q, float4{w.x * (v[c].x * inverse), w.y * (v[c].y * inverse),
                              w.z * (v[c].z * inverse), w.w * (v[c].w * inverse)});
  }
  if (rstd != nullptr && lane == 0) rstd[row] = inverse;
}

/// One block per rows_per_block rows, all its threads on one row at a time, `Chunks` float4s per
/// thread; each thread sums its columns' weight-gradient shares over the block's rows in
/// registers and writes them to partial[block, dim] once (the same order on every run).
template <int Chunks>
__global__ void rmsnorm_backward_vec_kernel(const float* dy, std::int64_t ldy, const float* x,
                                            std::int64_t ldx, const float* weight,
                                            const float* rstd, float* dx, float* partial,
                                            std::int64_t rows, std::int64_t dim) {
  __shared__ float shared[32];
  const std::int64_t first = blockIdx.x * rows_per_block;
  const std::int64_t last = min(first + rows_per_block, rows);
  const std::int64_t quads = dim / 4;
  float4 w[Chunks], acc[Chunks];
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const std::int64_t q = threadIdx.x + static_cast<std::int64_t>(threads) * c;
    w[c] = q < quads ? load4(weight + 4 * q) : float4{0, 0, 0, 0};
    acc[c] = float4{0, 0, 0, 0};
  }
  for (std::int64_t row = first; row < last; ++row) {
    const float inverse = rstd[row];
    float4 g[Chunks], n[Chunks];
    float dot = 0.0f;
#pragma unroll
    for (int c = 0; c < Chunks; ++c) {
      const std::int64_t q = threadIdx.x + static_cast<std::int64_t>(threads) * c;
      g[c] = q < quads ? load4(dy + row * ldy + 4 * q) : float4{0, 0, 0, 0};
      const float4 xv = q < quads ? load4(x + row * ldx + 4 * q) : float4{0, 0, 0, 0};
      n[c] = float4{xv.x * inverse, xv.y * inverse, xv.z * inverse, xv.w * inverse};
      dot += w[c].x * g[c].x * n[c].x + w[c].y * g[c].y * n[c].y + w[c].z * g[c].z * n[c].z +
             w[c].w * g[c].w * n[c].w;
    }
    const float mean_dot = block_sum(dot, shared) / static_cast<float>(dim);
#pragma unroll
    for (int c = 0; c < Chunks; ++c) {
      const std::int64_t q = threadIdx.x + static_cast<std::int64_t>(threads) * c;
      if (q >= quads) continue;
      float* out = dx + row * ldx + 4 * q;
      float4 d = load4(out);
      d.x += inverse * (w[c].x * g[c].x - n[c].x * mean_dot);
      d.y += inverse * (w[c].y * g[c].y - n[c].y * mean_dot);
      d.z += inverse * (w[c].z * g[c].z - n[c].z * mean_dot);
      d.w += inverse * (w[c].w * g[c].w - n[c].w * mean_dot);
      store4(out, d);
      acc[c].x += g[c].x * n[c].x, acc[c].y += g[c].y * n[c].y;
      acc[c].z += g[c].z * n[c].z, acc[c].w += g[c].w * n[c].w;
    }
  }
  if (partial == nullptr) return;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const std::int64_t q = threadIdx.x + static_cast<std::int64_t>(threads) * c;
    if (q < quads) store4(partial + blockIdx.x * dim + 4 * q, acc[c]);
  }
}

/// The float4s per lane (`per` lanes of a row) a vector kernel needs for `dim`, rounded up to a
/// power of two, or 0 where the scalar kernel runs (misaligned, or too wide).
int vector_chunks(std::int64_t dim, int per, std::initializer_list<const void*> pointers,
                  std::initializer_list<std::int64_t> leading) {
  if (dim % 4 != 0 || dim > 4096) return 0;
  for (const void* p : pointers)
    if (p != nullptr && !aligned(p, 16)) return 0;
  for (const std::int64_t ld : leading)
    if (ld % 4 != 0) return 0;
  const std::int64_t needed = (dim / 4 + per - 1) / per;
  int chunks = 1;
  while (chunks < needed) chunks *= 2;
  return chunks <= max_chunks ? chunks : 0;
}

/// Calls launch(std::integral_constant<int, C>) for chunks C (a power of two up to max_chunks).
template <class Launch>
void with_chunks(int chunks, Launch&& launch) {
  switch (chunks) {
    case 1:
      return launch(std::integral_constant<int, 1>{});
    case 2:
      return launch(std::integral_constant<int, 2>{});
    case 4:
      return launch(std::integral_constant<int, 4>{});
    case 8:
      return launch(std::integral_constant<int, 8>{});
    case 16:
      return launch(std::integral_constant<int, 16>{});
    default:
      return launch(std::integral_constant<int, 32>{});
  }
}

// One block per rows_per_block rows: dx of each row, and the block's partial weight gradient in
// partial[block, dim] (each thread owns the same columns in every row: no race, fixed order).
__global__ void rmsnorm_backward_kernel(const float* dy, std::int64_t ldy, const float* x,
                                        std::int64_t ldx, const float* weight, const float* rstd,
                                        float* dx, float* partial, std::int64_t rows,
                                        std::int64_t dim) {
  __shared__ float shared[32];
  const std::int64_t first = blockIdx.x * rows_per_block;
  const std::int64_t last = min(first + rows_per_block, rows);
  float* mine = partial != nullptr ? partial + blockIdx.x * dim : nullptr;
  for (std::int64_t row = first; row < last; ++row) {
    const float* dyr = dy + row * ldy;
    const float* xr = x + row * ldx;
    const float inverse = rstd[row];
    float dot = 0.0f;
    for (std::int64_t i = threadIdx.x; i < dim; i += threads)
      dot += weight[i] * dyr[i] * (xr[i] * inverse);
    const float mean_dot = block_sum(dot, shared) / static_cast<float>(dim);
    float* dxr = dx + row * ldx;
    for (std::int64_t i = threadIdx.x; i < dim; i += threads) {
      const float normalized = xr[i] * inverse;
      dxr[i] += inverse * (weight[i] * dyr[i] - normalized * mean_dot);
      if (mine != nullptr) mine[i] = (row == first ? 0.0f : mine[i]) + dyr[i] * normalized;
    }
  }
}

// NOTES: dweight[i] += the sum over the backward's blocks of partial[b, i]. One thread per column
// summing hundreds of partials left a few SMs waiting on one load after another (about 150 us
// per call at 4096 rows, 9 ms of the small config's step): a block here owns 32 columns, its 16
// lanes per column sum every 16th partial, and the lanes' sums are added in lane order (a fixed
// order whatever the GPU).
constexpr int sum_columns = 32, sum_lanes = 16;

__global__ void sum_partials_kernel(const float* partial, float* dweight, std::int64_t blocks,
                                    std::int64_t dim) {
  __shared__ float sums[sum_lanes][sum_columns];
  const int column = threadIdx.x % sum_columns, lane = threadIdx.x / sum_columns;
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(sum_columns) + column;
  float sum = 0.0f;
  if (i < dim) {
    float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // four loads in flight
    std::int64_t b = lane;
    for (; b + 3 * sum_lanes < blocks; b += 4 * sum_lanes)
#pragma unroll
      for (int u = 0; u < 4; ++u) part[u] += partial[(b + u * sum_lanes) * dim + i];
    for (; b < blocks; b += sum_lanes) part[0] += partial[b * dim + i];
    sum = (part[0] + part[1]) + (part[2] + part[3]);
  }
  sums[lane][column] = sum;
  __syncthreads();
  if (lane != 0 || i >= dim) return;
  float total = 0.0f;
  for (int l = 0; l < sum_lanes; ++l) total += sums[l][column];
  dweight[i] += total;
}

}  // namespace

void rmsnorm_forward(const float* x, std::int64_t ldx, const float* weight, float* y,
                     std::int64_t ldy, float* rstd, std::int64_t rows, std::int64_t dim, float eps,
                     void* stream) {
  if (rows == 0) return;
  const int chunks = vector_chunks(dim, 32, {x, weight, y}, {ldx, ldy});
  if (chunks > 0 && chunks <= 16) {  // a warp's row in registers: up to 64 floats per lane
    with_chunks(chunks, [&](auto c) {
      rmsnorm_forward_vec_kernel<decltype(c)::value>
          <<<blocks_for(rows, warps), threads, 0, as_stream(stream)>>>(x, ldx, weight, y, ldy, rstd,
                                                                       rows, dim, eps);
    });
  } else {
    rmsnorm_forward_kernel<<<blocks_for(rows, warps), threads, 0, as_stream(stream)>>>(
        x, ldx, weight, y, ldy, rstd, rows, dim, eps);
  }
  TROUPE_CUDA_LAUNCHED();
}

std::int64_t rmsnorm_backward_scratch(std::int64_t rows, std::int64_t dim) {
  return blocks_for(rows, rows_per_block) * dim;
}

void rmsnorm_backward(const float* dy, std::int64_t ldy, const float* x, std::int64_t ldx,
                      const float* weight, const float* rstd, float* dx, float* dweight,
                      std::int64_t rows, std::int64_t dim, float* scratch, void* stream) {
  if (rows == 0) return;
  require(dweight == nullptr || scratch != nullptr, "rmsnorm_backward",
          "a weight gradient needs rmsnorm_backward_scratch floats of scratch");
  const unsigned blocks = blocks_for(rows, rows_per_block);
  float* partial = dweight != nullptr ? scratch : nullptr;
  const int chunks = vector_chunks(dim, threads, {dy, x, weight, dx, partial}, {ldy, ldx, dim});
  if (chunks > 0) {
    with_chunks(chunks, [&](auto c) {
      rmsnorm_backward_vec_kernel<decltype(c)::value><<<blocks, threads, 0, as_stream(stream)>>>(
          dy, ldy, x, ldx, weight, rstd, dx, partial, rows, dim);
    });
  } else {
    rmsnorm_backward_kernel<<<blocks, threads, 0, as_stream(stream)>>>(
        dy, ldy, x, ldx, weight, rstd, dx, partial, rows, dim);
  }
  TROUPE_CUDA_LAUNCHED();
  if (dweight == nullptr) return;
  sum_partials_kernel<<<blocks_for(dim, sum_columns), sum_columns * sum_lanes, 0,
                        as_stream(stream)>>>(scratch, dweight, blocks, dim);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
