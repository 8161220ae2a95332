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

/// ln x for a positive normal float, within 3 ulp of std::log (Cephes' logf: x = m 2^e with m in
/// [sqrt(1/2), sqrt(2)), ln(m) by a degree-9 polynomial), branch-free so that a loop of it
/// vectorises. Not for 0, negatives, denormals, inf or NaN.
inline float vector_log(float x) {
  const auto bits = std::bit_cast<std::uint32_t>(x);
  auto e = static_cast<float>(static_cast<std::int32_t>((bits >> 23) & 0xffu) - 126);
  float m = std::bit_cast<float>((bits & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

/// sin and cos of 2 pi t for t in [0, 1), within a few ulp: the quadrant from 4t, then
/// Cephes' polynomials around pi/4 of the angle left. Branch-free.
inline void vector_sincos_turns(float t, float& sine, float& cosine) {
  const float quarter = std::floor(t * 4.0f);
  const float y = (t * 4.0f - quarter) * 1.57079632679489662f - 0.785398163397448310f;
  const float z = y * y;
  const float s = y + y * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f);
  const float c =
      1.0f - 0.5f * z +
      z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f);
  const float half_root = 0.707106781186547524f;  // angle = y + pi/4
  const float s0 = (s + c) * half_root, c0 = (c - s) * half_root;
  const auto q = static_cast<std::int32_t>(quarter) & 3;
  sine = q == 0 ? s0 : (q == 1 ? c0 : (q == 2 ? -s0 : -c0));
  cosine = q == 0 ? c0 : (q == 1 ? -s0 : (q == 2 ? -c0 : s0));
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
