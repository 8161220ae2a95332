#pragma once

// DeepSeek-V3's fine-grained FP8 casts on a CUDA device, bit-identical to the host quantizer
// (kernels/cpu/fp8_quantize.hpp): scale = max(amax, 1e-4) / 448, code = e4m3(x * (448 /
// max(amax, 1e-4))) rounded to nearest even and saturating, edge tiles zero-padded (only real
// elements count towards amax; NaN does not raise it, as fmax ignores NaN on both sides).
//
// One kernel reads each 128x128 patch of the input once and writes any of four outputs, so the
// casts a GEMM pass needs from one tensor cost one read of it:
//  - row tiles: codes[rows, cols] with one scale per 1x128 tile along each row (an activation
//    or gradient whose reduction dimension is the columns: Fprop's x, Dgrad's dy);
//  - column tiles, transposed: codes_t[cols, rows] with one scale per 128x1 tile down each
//    column (the reduction dimension is the rows, as Wgrad's dy and x have it: the tokens);
//  - blocks: codes[rows, cols] with one scale per 128x128 block (weights, for Fprop);
//  - blocks, transposed: codes_t[cols, rows] and the transposed block scales (Dgrad's W^T).
// Scales land at scale[i * scale_stride_0 + j * scale_stride_1] for tile or block (i, j) of the
// output's rows and tiles, so any layout a GEMM library asks for (row- or column-major, padded)
// is written directly. Plain C++ header: the runtime and plugins call it without CUDA headers.

#include <cstdint>

namespace troupe::kernels::cuda {

/// Where one output of a cast goes; codes == nullptr skips it.
struct fp8_output {
  std::uint8_t* codes = nullptr;  ///< row-major, leading dimension = its column count
  float* scale = nullptr;         ///< scale_inv: code * scale is the value
  std::int64_t scale_stride_0 = 0;
  std::int64_t scale_stride_1 = 0;
};

/// The four casts of fp8_quantize; any of them may be skipped.
struct fp8_outputs {
  fp8_output row_tiles;                ///< codes[rows, cols], scale (row, col/128)
  fp8_output column_tiles_transposed;  ///< codes[cols, rows], scale (col, row/128)
  fp8_output blocks;                   ///< codes[rows, cols], scale (row/128, col/128)
  fp8_output blocks_transposed;        ///< codes[cols, rows], scale (col/128, row/128)
};

/// Casts in[rows, cols] (row-major, leading dimension ld) on `stream` (a cudaStream_t).
void fp8_quantize(const float* in, std::int64_t ld, std::int64_t rows, std::int64_t cols,
                  const fp8_outputs& out, void* stream);
/// The same from BF16 bits (each value widened exactly to FP32 first).
void fp8_quantize(const std::uint16_t* in, std::int64_t ld, std::int64_t rows, std::int64_t cols,
                  const fp8_outputs& out, void* stream);

}  // namespace troupe::kernels::cuda
