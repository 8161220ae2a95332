#pragma once

// A counter-based generator for parameter initialisation: value i of a stream is a pure function
// of (key, i) (SplitMix64's output function over the key plus i times its gamma), so a tensor is
// filled by any number of threads, in any order, with the same bits, and a resumed or re-sharded
// job draws what a fresh one would. Normals in pairs by Box-Muller from the two 24-bit fields of
// one draw (the tails end near 5.9 sigma); uniforms from the top 24 bits.
// kernels/cpu/random_fill.hpp fills a tensor with them, vectorised; the runtime draws parameters
// (runtime/model/parameter_store.cpp) and samples tokens (runtime/inference/sampler.cpp) with it.

#include <cmath>
#include <cstdint>

#include "kernels/cpu/vector_math.hpp"

namespace troupe {

class counter_random {
 public:
  explicit counter_random(std::uint64_t key) : key_(key) {}

  /// 64 random bits of element `i`.
  std::uint64_t bits(std::uint64_t i) const {
    std::uint64_t z = key_ + (i + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  /// Uniform in [-scale, scale).
  float uniform(std::uint64_t i, float scale) const {
    const float u = static_cast<float>(bits(i) >> 40) * 0x1p-24f;  // [0, 1)
    return (2.0f * u - 1.0f) * scale;
  }

  /// Elements 2k and 2k + 1 of N(0, scale^2): one Box-Muller pair from draw k.
  void normal_pair(std::uint64_t k, float scale, float& first, float& second) const {
    const std::uint64_t b = bits(k);
    const float u1 = (static_cast<float>(b >> 40) + 0.5f) * 0x1p-24f;  // (0, 1)
    const float u2 = static_cast<float>((b >> 8) & 0xffffffu) * 0x1p-24f;
    // NOTES: branch-free log and sincos (kernels/cpu/vector_math.hpp), so the filling loop
    // (kernels/cpu/random_fill.cpp) vectorises; libm's took two thirds of the start-up time.
    const float radius = scale * std::sqrt(-2.0f * kernels::cpu::vector_log(u1));
    kernels::cpu::vector_sincos_turns(u2, second, first);
    first *= radius;
    second *= radius;
  }

  /// Element i of N(0, scale^2) (the member of its pair normal_pair gives).
  float normal(std::uint64_t i, float scale) const {
    float first = 0.0f, second = 0.0f;
    normal_pair(i / 2, scale, first, second);
    return i % 2 == 0 ? first : second;
  }

 private:
  std::uint64_t key_;
};

}  // namespace troupe
