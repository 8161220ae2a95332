#include "kernels/cpu/convert.hpp"

#include <bit>
#include <cstring>

#include "runtime/tensor/bf16.hpp"
#include "runtime/tensor/e4m3.hpp"
#include "runtime/tensor/f16.hpp"

// NOTES: the bulk kernels restate the scalar codecs (runtime/tensor/*.hpp, the specification) in
// branch-free form so the loops vectorize; the tests hold the two to the same bits. Each kernel
// is also compiled for AVX2 and picked at load time (target_clones), since the baseline x86-64
// target has only SSE2 and these binaries run on machines we do not know at build time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define TROUPE_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TROUPE_VECTOR_CLONES
#endif

namespace troupe::kernels::cpu {

namespace {

inline std::uint32_t bits_of(float x) {
  return std::bit_cast<std::uint32_t>(x);
}
inline float float_of(std::uint32_t x) {
  return std::bit_cast<float>(x);
}

}  // namespace

TROUPE_VECTOR_CLONES
void f32_to_e4m3(const float* input, std::uint8_t* output, std::int64_t count) {
  // Subnormal E4M3 values are multiples of 2^-9. Adding 2^14 to a magnitude below 2^-6 leaves a
  // float whose last mantissa bit weighs 2^-9, so the FPU's round-to-nearest-even does the
  // rounding; the code is the difference of the bit patterns.
  constexpr std::uint32_t subnormal_magic = (127u + 14u) << 23;
  for (std::int64_t i = 0; i < count; ++i) {
    const std::uint32_t bits = bits_of(input[i]);
    const std::uint32_t sign = (bits >> 24) & 0x80u;
    const std::uint32_t magnitude = bits & 0x7FFFFFFFu;
    // Normal: rebias the exponent (127 -> 7) and round the mantissa to 3 bits, ties to even.
    const std::uint32_t normal =
        (magnitude - (120u << 23) + 0x7FFFFu + ((magnitude >> 20) & 1u)) >> 20;
    const std::uint32_t subnormal =
        bits_of(float_of(magnitude) + float_of(subnormal_magic)) - subnormal_magic;
    std::uint32_t code = magnitude < 0x3C800000u ? subnormal : normal;  // below 2^-6: subnormal
    code = magnitude >= 0x43E00000u ? 0x7Eu : code;                     // >= 448 and inf: saturate
    code |= sign;
    code = magnitude > 0x7F800000u ? std::uint32_t{e4m3_nan_code} : code;
    output[i] = static_cast<std::uint8_t>(code);
  }
}

TROUPE_VECTOR_CLONES
void e4m3_to_f32(const std::uint8_t* input, float* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) {
    const std::uint32_t code = input[i];
    const std::uint32_t sign = (code & 0x80u) << 24;
    const std::uint32_t magnitude = code & 0x7Fu;
    const std::uint32_t normal = (magnitude << 20) + (120u << 23);
    const std::uint32_t subnormal =
        bits_of(static_cast<float>(static_cast<int>(magnitude & 7u)) * (1.0f / 512.0f));
    std::uint32_t result = magnitude < 8u ? subnormal : normal;
    result = magnitude == 0x7Fu ? 0x7FC00000u : result;  // the NaN code
    output[i] = float_of(result | sign);
  }
}

TROUPE_VECTOR_CLONES
void f32_to_bf16(const float* input, std::uint16_t* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) {
    const std::uint32_t bits = bits_of(input[i]);
    const std::uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const std::uint32_t quiet_nan = (bits >> 16) | 0x40u;
    output[i] =
        static_cast<std::uint16_t>((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
  }
}

TROUPE_VECTOR_CLONES
void bf16_to_f32(const std::uint16_t* input, float* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i)
    output[i] = float_of(static_cast<std::uint32_t>(input[i]) << 16);
}

void f32_to_f16(const float* input, std::uint16_t* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = float_to_f16(input[i]);
}

void f16_to_f32(const std::uint16_t* input, float* output, std::int64_t count) {
  for (std::int64_t i = 0; i < count; ++i) output[i] = f16_to_float(input[i]);
}

}  // namespace troupe::kernels::cpu
