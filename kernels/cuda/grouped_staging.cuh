#pragma once

// The rounding passes both BF16 grouped GEMMs stage their operands with (grouped_gemm_bf16.cu,
// grouped_gemm_wgmma.cu): rows of an f32 matrix (gathered through the routing's row order) or of
// the experts' stacked weights, rounded to BF16 with each row padded to a multiple of 8 elements
// (16 bytes). Internal to kernels/cuda; each including file gets its own copies (internal
// linkage), as kernels must not be shared across separately compiled CUDA files.

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/mma.cuh"

namespace troupe::kernels::cuda::grouped {

namespace {

using mma::bf16;

/// `count` rounded up to a multiple of 8 (a 16-byte piece of BF16).
__host__ __device__ inline std::int64_t padded(std::int64_t count) {
  return (count + 7) / 8 * 8;
}

/// Row r of a row-major f32 matrix, gathered through rows.source when it is set.
struct gathered_rows {
  const float* base;
  std::int64_t ld;
  const std::int64_t* source;
  std::int64_t divisor;
  __device__ const float* row(std::int64_t r) const {
    return base + (source != nullptr ? source[r] / divisor : r) * ld;
  }
};

/// Row r of the experts' weights stacked [G][n][k], each expert's [n, k] from one table or, with
/// a second, its upper half from the first and its lower half from the second.
struct weight_rows {
  weight_tables tables;
  std::int64_t n, k;
  __device__ const float* row(std::int64_t r) const {
    const std::int64_t g = r / n, within = r % n;
    if (tables.second == nullptr) return tables.first[g] + within * k;
    const std::int64_t half = n / 2;
    return within < half ? tables.first[g] + within * k : tables.second[g] + (within - half) * k;
  }
};

/// out[r, :ld_out] = BF16 of the first `width` elements of source.row(r), zeros after them; eight
/// elements (one 16-byte store) per thread and step.
template <class Source>
__global__ void round_rows_kernel(Source source, std::int64_t count, std::int64_t width,
                                  std::int64_t ld_out, bf16* out) {
  const std::int64_t pieces = ld_out / 8, total = count * pieces;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / pieces, c = i % pieces * 8;
    const float* in = source.row(r) + c;
    float v[8];
    if (c + 8 <= width && reinterpret_cast<std::uintptr_t>(in) % 16 == 0) {
      const float4 low = reinterpret_cast<const float4*>(in)[0];
      const float4 high = reinterpret_cast<const float4*>(in)[1];
      v[0] = low.x, v[1] = low.y, v[2] = low.z, v[3] = low.w;
      v[4] = high.x, v[5] = high.y, v[6] = high.z, v[7] = high.w;
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = c + e < width ? in[e] : 0.0f;
    }
    uint4 packed;
    packed.x = mma::pack(v[0], v[1]);
    packed.y = mma::pack(v[2], v[3]);
    packed.z = mma::pack(v[4], v[5]);
    packed.w = mma::pack(v[6], v[7]);
    *reinterpret_cast<uint4*>(out + r * ld_out + c) = packed;
  }
}

template <class Source>
void round_rows(const Source& source, std::int64_t count, std::int64_t width, std::int64_t ld_out,
                bf16* out, cudaStream_t stream) {
  if (count == 0) return;
  const std::int64_t total = count * (ld_out / 8);
  const unsigned blocks =
      static_cast<unsigned>(std::min<std::int64_t>(blocks_for(total, 256), 4096));
  round_rows_kernel<<<blocks, 256, 0, stream>>>(source, count, width, ld_out, out);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace

}  // namespace troupe::kernels::cuda::grouped
