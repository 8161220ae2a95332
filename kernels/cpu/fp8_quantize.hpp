#pragma once

// DeepSeek-V3's fine-grained FP8 quantization on the host: E4M3 codes with one FP32 scale per
// 1x128 tile (activations, gradients) or per 128x128 block (weights). scale = max(amax, 1e-4) / 448
// and code = e4m3(x * 448 / max(amax, 1e-4)), as DeepGEMM's reference casts do; tiles and blocks
// at the edges are zero-padded (only the real elements count towards amax).

#include <cstdint>

namespace troupe::kernels::cpu {

inline constexpr std::int64_t fp8_tile = 128;

/// out[r, c] = dequantized(quantized(in[r, c])) with one scale per 1x128 tile along each row
/// (rows, cols; leading dimensions ld_in, ld_out). Emulates an activation or gradient operand
/// whose reduction dimension is the columns.
void fp8_round_trip_row_tiles(const float* in, std::int64_t ld_in, float* out, std::int64_t ld_out,
                              std::int64_t rows, std::int64_t cols);

/// The same with 128x1 tiles down each column (the reduction dimension is the rows).
void fp8_round_trip_column_tiles(const float* in, std::int64_t ld_in, float* out,
                                 std::int64_t ld_out, std::int64_t rows, std::int64_t cols);

/// The same with one scale per 128x128 block (weights).
void fp8_round_trip_blocks(const float* in, std::int64_t ld_in, float* out, std::int64_t ld_out,
                           std::int64_t rows, std::int64_t cols);

/// Checkpoint form: codes[rows, cols] and scale_inv[ceil(rows/128), ceil(cols/128)], the factor
/// that turns codes back into values (DeepSeek's `weight_scale_inv`).
void fp8_quantize_blocks(const float* in, std::int64_t rows, std::int64_t cols, std::uint8_t* codes,
                         float* scale_inv);

/// Wire form of activations (FP8 dispatch to expert shards): codes[rows, cols] and
/// scale_inv[rows, ceil(cols/128)], one per 1x128 tile along each row.
void fp8_quantize_row_tiles(const float* in, std::int64_t rows, std::int64_t cols,
                            std::uint8_t* codes, float* scale_inv);

/// out = codes * scale_inv of their 1x128 tile.
void fp8_dequantize_row_tiles(const std::uint8_t* codes, const float* scale_inv, std::int64_t rows,
                              std::int64_t cols, float* out);

/// out = codes * scale_inv of their block.
void fp8_dequantize_blocks(const std::uint8_t* codes, const float* scale_inv, std::int64_t rows,
                           std::int64_t cols, float* out);

}  // namespace troupe::kernels::cpu
