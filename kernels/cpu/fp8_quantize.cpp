#include "kernels/cpu/fp8_quantize.hpp"

#include <algorithm>
#include <cmath>

#include "runtime/tensor/e4m3.hpp"

namespace troupe::kernels::cpu {

namespace {

constexpr float minimum_amax = 1e-4f;

/// Round-trips the [rows x cols] region at in/out with one scale.
void round_trip_region(const float* in, std::int64_t ld_in, float* out, std::int64_t ld_out,
                       std::int64_t rows, std::int64_t cols) {
  float amax = 0.0f;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) amax = std::fmax(amax, std::fabs(in[r * ld_in + c]));
  amax = std::fmax(amax, minimum_amax);
  const float to_fp8 = e4m3_max / amax;
  const float scale = amax / e4m3_max;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      out[r * ld_out + c] = e4m3_to_float(float_to_e4m3(in[r * ld_in + c] * to_fp8)) * scale;
}

}  // namespace

void fp8_round_trip_row_tiles(const float* in, std::int64_t ld_in, float* out, std::int64_t ld_out,
                              std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; c += fp8_tile)
      round_trip_region(in + r * ld_in + c, ld_in, out + r * ld_out + c, ld_out, 1,
                        std::min(fp8_tile, cols - c));
}

void fp8_round_trip_column_tiles(const float* in, std::int64_t ld_in, float* out,
                                 std::int64_t ld_out, std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = 0; r < rows; r += fp8_tile)
    for (std::int64_t c = 0; c < cols; ++c)
      round_trip_region(in + r * ld_in + c, ld_in, out + r * ld_out + c, ld_out,
                        std::min(fp8_tile, rows - r), 1);
}

void fp8_round_trip_blocks(const float* in, std::int64_t ld_in, float* out, std::int64_t ld_out,
                           std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = 0; r < rows; r += fp8_tile)
    for (std::int64_t c = 0; c < cols; c += fp8_tile)
      round_trip_region(in + r * ld_in + c, ld_in, out + r * ld_out + c, ld_out,
                        std::min(fp8_tile, rows - r), std::min(fp8_tile, cols - c));
}

void fp8_quantize_blocks(const float* in, std::int64_t rows, std::int64_t cols, std::uint8_t* codes,
                         float* scale_inv) {
  const std::int64_t block_cols = (cols + fp8_tile - 1) / fp8_tile;
  for (std::int64_t r0 = 0; r0 < rows; r0 += fp8_tile) {
    for (std::int64_t c0 = 0; c0 < cols; c0 += fp8_tile) {
      const std::int64_t r1 = std::min(rows, r0 + fp8_tile), c1 = std::min(cols, c0 + fp8_tile);
      float amax = 0.0f;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(in[r * cols + c]));
      amax = std::fmax(amax, minimum_amax);
      const float to_fp8 = e4m3_max / amax;
      for (std::int64_t r = r0; r < r1; ++r)
        for (std::int64_t c = c0; c < c1; ++c)
          codes[r * cols + c] = float_to_e4m3(in[r * cols + c] * to_fp8);
      scale_inv[(r0 / fp8_tile) * block_cols + c0 / fp8_tile] = amax / e4m3_max;
    }
  }
}

void fp8_quantize_row_tiles(const float* in, std::int64_t rows, std::int64_t cols,
                            std::uint8_t* codes, float* scale_inv) {
  const std::int64_t tiles = (cols + fp8_tile - 1) / fp8_tile;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c0 = 0; c0 < cols; c0 += fp8_tile) {
      const std::int64_t c1 = std::min(cols, c0 + fp8_tile);
      float amax = 0.0f;
      for (std::int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(in[r * cols + c]));
      amax = std::fmax(amax, minimum_amax);
      const float to_fp8 = e4m3_max / amax;
      for (std::int64_t c = c0; c < c1; ++c)
        codes[r * cols + c] = float_to_e4m3(in[r * cols + c] * to_fp8);
      scale_inv[r * tiles + c0 / fp8_tile] = amax / e4m3_max;
    }
}

void fp8_dequantize_row_tiles(const std::uint8_t* codes, const float* scale_inv, std::int64_t rows,
                              std::int64_t cols, float* out) {
  const std::int64_t tiles = (cols + fp8_tile - 1) / fp8_tile;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = e4m3_to_float(codes[r * cols + c]) * scale_inv[r * tiles + c / fp8_tile];
}

void fp8_dequantize_blocks(const std::uint8_t* codes, const float* scale_inv, std::int64_t rows,
                           std::int64_t cols, float* out) {
  const std::int64_t block_cols = (cols + fp8_tile - 1) / fp8_tile;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = e4m3_to_float(codes[r * cols + c]) *
                          scale_inv[(r / fp8_tile) * block_cols + c / fp8_tile];
}

}  // namespace troupe::kernels::cpu
