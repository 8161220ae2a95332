#pragma once

// Elementwise math written so that loops over it vectorize: expf without a libm call, branch-free,
// and the attribute that compiles a kernel for AVX-512 and AVX2 as well as the baseline x86-64
// (SSE2), picked at load time; exp_shifted, such a loop ready-made. Internal to kernels/cpu.

#include <bit>
#include <cmath>
#include <cstdint>

// NOTES: the baseline target has only SSE2 and these binaries run on machines we do not know at
// build time, so vectorised kernels carry clones for wider units (GCC's target_clones; not under
// ASan, whose interceptors and ifunc resolvers do not mix).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define TROUPE_WIDE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TROUPE_WIDE_CLONES
#endif

namespace troupe::kernels::cpu {

/// e^x for float, within 2 ulp of std::exp over [-87.3, 88] (clamped outside, so it never
/// returns inf or a denormal; NaN stays NaN): x = n ln 2 + r with |r| <= ln 2 / 2, e^r by a
/// degree-6 polynomial (Cephes' expf coefficients), 2^n put in the exponent bits. No branches and
/// no calls, so a loop of it vectorises.
inline float vector_exp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);  // not fmin/fmax: they keep loops scalar
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  // ln 2 in two parts, so that n * ln2 is subtracted without rounding error
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const std::int32_t exponent = static_cast<std::int32_t>(n) + 127;
  return e * std::bit_cast<float>(static_cast<std::uint32_t>(exponent) << 23);
}

/// values[i] = e^(values[i] - shift), through vector_exp, vectorised (softmax numerators).
void exp_shifted(float* values, std::int64_t count, float shift);

/// out[i] = e^(values[i] - shift) through vector_exp; returns their sum, accumulated in double in
/// 16 interleaved partial sums (so the loop vectorises). out may be values.
double exp_shifted_sum(const float* values, float* out, std::int64_t count, float shift);

/// The sum of e^(values[i] - shift) as exp_shifted_sum, without storing the terms.
double sum_exp_shifted(const float* values, std::int64_t count, float shift);

/// 1 / (1 + e^-x) through vector_exp.
inline float vector_sigmoid(float x) {
  return 1.0f / (1.0f + vector_exp(-x));
}

}  // namespace troupe::kernels::cpu
