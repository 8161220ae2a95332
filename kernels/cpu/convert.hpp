#pragma once

// Bulk dtype conversions on the host. Loops are written so the compiler vectorizes them; the
// scalar codecs they apply live in runtime/tensor/{e4m3,bf16,f16}.hpp.

#include <cstdint>

namespace troupe::kernels::cpu {

void f32_to_e4m3(const float* input, std::uint8_t* output, std::int64_t count);
void e4m3_to_f32(const std::uint8_t* input, float* output, std::int64_t count);
void f32_to_bf16(const float* input, std::uint16_t* output, std::int64_t count);
void bf16_to_f32(const std::uint16_t* input, float* output, std::int64_t count);
void f32_to_f16(const float* input, std::uint16_t* output, std::int64_t count);
void f16_to_f32(const std::uint16_t* input, float* output, std::int64_t count);

}  // namespace troupe::kernels::cpu
