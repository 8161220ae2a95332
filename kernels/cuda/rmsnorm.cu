#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/rmsnorm.hpp"

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
  rmsnorm_forward_kernel<<<blocks_for(rows, warps), threads, 0, as_stream(stream)>>>(
      x, ldx, weight, y, ldy, rstd, rows, dim, eps);
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
  rmsnorm_backward_kernel<<<blocks, threads, 0, as_stream(stream)>>>(
      dy, ldy, x, ldx, weight, rstd, dx, dweight != nullptr ? scratch : nullptr, rows, dim);
  TROUPE_CUDA_LAUNCHED();
  if (dweight == nullptr) return;
  sum_partials_kernel<<<blocks_for(dim, sum_columns), sum_columns * sum_lanes, 0,
                        as_stream(stream)>>>(scratch, dweight, blocks, dim);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
