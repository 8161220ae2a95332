#pragma once

// How both BF16 grouped GEMMs (grouped_gemm_bf16.cu, grouped_gemm_wgmma.cu) stage their operands
// and lay out their grids: rows of an f32 matrix (gathered through the routing's row order) or of
// the experts' stacked weights, rounded to BF16 with each row padded to a multiple of 8 elements
// (16 bytes), in one layout per pass that both kernels read. Internal to kernels/cuda; each
// including file gets its own copies (internal linkage), as kernels must not be shared across
// separately compiled CUDA files.

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

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

/// A pass's BF16 operands, rows padded (np = padded(n), kp = padded(k), R rows):
///   Fprop  a = x rows gathered [R, kp]   b = W [G * n, kp]
///   Dgrad  a = dy [R, np]                b = W [G * n, kp]
///   Wgrad  a = dy [R, np]                b = x rows gathered [R, kp]
/// W is the caller's rounded copy where it gives one, else rounded into the staging buffer too.
struct staged {
  const bf16* a;
  std::int64_t lda;
  const bf16* b;
  std::int64_t ldb;
};

/// Bytes of staging stage_operands needs for any pass of these rows and shapes.
inline std::size_t staging_bytes(const grouped_rows& rows, std::int64_t n, std::int64_t k) {
  const std::int64_t np = padded(n), kp = padded(k), weights = rows.groups * n * kp;
  const std::int64_t elements = std::max(
      {rows.rows * kp + weights, rows.rows * np + weights, rows.rows * np + rows.rows * kp});
  return static_cast<std::size_t>(elements) * sizeof(bf16);
}

/// Rounds pass p's operands into `staging` (staging_bytes) on `stream`; `kernel` names the caller
/// in the error when there is no staging buffer.
inline staged stage_operands(pass p, const arguments& args, void* staging, cudaStream_t stream,
                             const char* kernel) {
  require(staging != nullptr, kernel, "no staging buffer for the BF16 operands");
  const std::int64_t np = padded(args.n), kp = padded(args.k), rows_total = args.rows.rows;
  auto* first = static_cast<bf16*>(staging);
  // The weights as BF16 [G * n, kp]: the caller's copy, or rounded into `space` now.
  const auto weights = [&](bf16* space) {
    if (args.weights.rounded != nullptr) return static_cast<const bf16*>(args.weights.rounded);
    round_rows(weight_rows{args.weights, args.n, args.k}, args.rows.groups * args.n, args.k, kp,
               space, stream);
    return static_cast<const bf16*>(space);
  };
  // An activation operand: its producer's BF16 rows as they are, or rounded into `space` now.
  struct rows_at {
    const bf16* data;
    std::int64_t ld;
  };
  const auto activations = [&](const void* rounded, const float* f32, std::int64_t ld,
                               const std::int64_t* source, std::int64_t width,
                               std::int64_t padded_ld, bf16* space) -> rows_at {
    if (rounded != nullptr) return {static_cast<const bf16*>(rounded), ld};
    round_rows(gathered_rows{f32, ld, source, args.rows.divisor}, rows_total, width, padded_ld,
               space, stream);
    return {space, padded_ld};
  };
  switch (p) {
    case pass::fprop: {
      const bf16* w = weights(first + rows_total * kp);
      const rows_at x =
          activations(args.a16, args.a, args.lda, args.rows.source, args.k, kp, first);
      return {x.data, x.ld, w, kp};
    }
    case pass::dgrad: {
      const bf16* w = weights(first + rows_total * np);
      const rows_at dy = activations(args.a16, args.a, args.lda, nullptr, args.n, np, first);
      return {dy.data, dy.ld, w, kp};
    }
    case pass::wgrad:
      break;
  }
  const rows_at dy = activations(args.a16, args.a, args.lda, nullptr, args.n, np, first);
  const rows_at x = activations(args.b16, args.b, args.ldb, args.rows.source, args.k, kp,
                                first + rows_total * np);
  return {dy.data, dy.ld, x.data, x.ld};
}

/// Calls `launch` with pass p as a compile-time constant (std::integral_constant<pass, P>).
template <class Launch>
void for_pass(pass p, Launch&& launch) {
  switch (p) {
    case pass::fprop:
      return launch(std::integral_constant<pass, pass::fprop>{});
    case pass::dgrad:
      return launch(std::integral_constant<pass, pass::dgrad>{});
    case pass::wgrad:
      return launch(std::integral_constant<pass, pass::wgrad>{});
  }
}

/// The grid of pass p's products, tensor_core_tile square tiles: Fprop and Dgrad (output column
/// tiles, row tiles of the experts), Wgrad (k tiles, n tiles, chunks of the experts' rows).
inline dim3 product_grid(pass p, const arguments& args) {
  switch (p) {
    case pass::fprop:
      return dim3(blocks_for(args.n, tensor_core_tile), row_tiles<tensor_core_tile>(args.rows));
    case pass::dgrad:
      return dim3(blocks_for(args.k, tensor_core_tile), row_tiles<tensor_core_tile>(args.rows));
    case pass::wgrad:
      break;
  }
  return dim3(blocks_for(args.k, tensor_core_tile), blocks_for(args.n, tensor_core_tile),
              row_tiles<wgrad_chunk>(args.rows));
}

}  // namespace

}  // namespace troupe::kernels::cuda::grouped
