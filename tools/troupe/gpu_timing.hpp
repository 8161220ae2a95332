#pragma once

// Timing GPU work for the `troupe bench` commands: CUDA events around each run on one stream, and
// the random inputs they time it on.

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "runtime/device/stream.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe::cli {

/// Normal values (seeded) as an f32 tensor on `where`.
inline tensor random_f32(std::int64_t count, std::uint32_t seed, device where) {
  tensor host = tensor::empty(dtype::f32, {count});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  float* p = host.data_as<float>();
  for (std::int64_t i = 0; i < count; ++i) p[i] = normal(rng);
  return host.to(where);
}

/// Milliseconds of each of `iterations` runs of `body` after 5 warm-up runs, sorted (the median
/// is the middle one), timed by events on `on`.
template <class Body>
std::vector<double> event_times_ms(cuda::stream& on, int iterations, const Body& body) {
  for (int i = 0; i < 5; ++i) body();
  std::vector<cuda::event> starts, ends;
  for (int i = 0; i < iterations; ++i) {
    starts.emplace_back(on.device(), true);
    ends.emplace_back(on.device(), true);
  }
  for (int i = 0; i < iterations; ++i) {
    starts[static_cast<std::size_t>(i)].record(on);
    body();
    ends[static_cast<std::size_t>(i)].record(on);
  }
  on.synchronize();
  std::vector<double> ms;
  for (int i = 0; i < iterations; ++i)
    ms.push_back(cuda::event::elapsed_ms(starts[static_cast<std::size_t>(i)],
                                         ends[static_cast<std::size_t>(i)]));
  std::sort(ms.begin(), ms.end());
  return ms;
}

/// The median of event_times_ms.
template <class Body>
double median_ms(cuda::stream& on, int iterations, const Body& body) {
  const std::vector<double> ms = event_times_ms(on, iterations, body);
  return ms[ms.size() / 2];
}

}  // namespace troupe::cli
