#include "kernels/cpu/convert.hpp"

#include <array>

#include "runtime/tensor/bf16.hpp"
#include "runtime/tensor/e4m3.hpp"
#include "runtime/tensor/f16.hpp"

namespace troupe::kernels::cpu {

namespace {

// NOTES: decoding through a 256-entry table is one load per element, faster than the bit
// arithmetic and exact by construction (the table is the scalar decoder's output).
constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> table{};
  for (int code = 0; code < 256; ++code) table[code] = e4m3_to_float(static_cast<std::uint8_t>(code));
  return table;
}
const std::array<float, 256> e4m3_table = make_e4m3_table();

}  // namespace

void f32_to_e4m3(const float* input, std::uint8_t* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = float_to_e4m3(input[i]);
}

void e4m3_to_f32(const std::uint8_t* input, float* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = e4m3_table[input[i]];
}

void f32_to_bf16(const float* input, std::uint16_t* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = float_to_bf16(input[i]);
}

void bf16_to_f32(const std::uint16_t* input, float* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = bf16_to_float(input[i]);
}

void f32_to_f16(const float* input, std::uint16_t* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = float_to_f16(input[i]);
}

void f16_to_f32(const std::uint16_t* input, float* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = f16_to_float(input[i]);
}

}  // namespace troupe::kernels::cpu
