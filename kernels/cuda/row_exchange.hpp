#pragma once

// The row moves around an all-to-all of token rows between GPUs (runtime/experts/
// nccl_expert_exchange.hpp): rows reordered by an index list, as raw bytes (FP8 codes, their
// scales, BF16 or FP32 rows alike), and the wire formats decoded back to FP32 rows with the
// reordering fused in. FP8 rows decode as the host does (kernels/cpu/fp8_quantize.hpp:
// e4m3(code) * scale of the row's 1x128 tile, one FP32 multiply), so a row quantized on the
// device and decoded here has the host's bits. Device pointers; `stream` is a cudaStream_t.

#include <cstdint>

namespace troupe::kernels::cuda {

/// out row r = in row source[r] (rows of `row_bytes` bytes), for r < rows.
void gather_rows(const void* in, std::int64_t row_bytes, const std::int64_t* source,
                 std::int64_t rows, void* out, void* stream);

/// out[r, c] = e4m3(codes[s, c]) * scales[s, c / 128] with s = source[r] (r when source is null);
/// codes [*, width], scales [*, ceil(width / 128)], out [rows, width] FP32.
void decode_fp8_rows(const std::uint8_t* codes, const float* scales, std::int64_t width,
                     const std::int64_t* source, std::int64_t rows, float* out, void* stream);

/// out[r, c] = bf16 values[s, c] widened, s = source[r] (r when source is null).
void decode_bf16_rows(const std::uint16_t* values, std::int64_t width, const std::int64_t* source,
                      std::int64_t rows, float* out, void* stream);

}  // namespace troupe::kernels::cuda
