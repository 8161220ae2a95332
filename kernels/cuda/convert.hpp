#pragma once

// Bulk dtype conversions on a CUDA device, enqueued on `stream` (a cudaStream_t; nullptr is the
// default stream). Pointers are device pointers. E4M3 encoding uses the hardware conversion
// cvt.rn.satfinite (round to nearest even, saturating at +-448, NaN -> 0x7F), which is the
// behaviour runtime/tensor/e4m3.hpp reproduces on the host. This header is plain C++ so the
// runtime can call the kernels without CUDA headers.

#include <cstdint>

namespace troupe::kernels::cuda {

void f32_to_e4m3(const float* input, std::uint8_t* output, std::int64_t count, void* stream);
void e4m3_to_f32(const std::uint8_t* input, float* output, std::int64_t count, void* stream);
void f32_to_bf16(const float* input, std::uint16_t* output, std::int64_t count, void* stream);
void bf16_to_f32(const std::uint16_t* input, float* output, std::int64_t count, void* stream);
/// `rows` rows of `cols` f32 values, `ld` apart, into `output` as contiguous BF16 rows.
void f32_to_bf16_rows(const float* input, std::int64_t ld, std::uint16_t* output, std::int64_t rows,
                      std::int64_t cols, void* stream);

}  // namespace troupe::kernels::cuda
