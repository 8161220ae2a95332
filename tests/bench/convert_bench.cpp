// Bandwidth of the dtype conversion kernels, as a ratio to a plain copy of the same bytes on the
// same device in the same run (memcpy on the host, cudaMemcpy device-to-device on a GPU). Buffers
// are allocated and touched once, outside the timing. Bytes counted: read plus written.
//   build/tests/convert-bench          (host kernels, one thread)
//   build/tests/convert-bench --gpu    (CUDA kernels on cuda:0)
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "kernels/cpu/convert.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/exec/convert.hpp"
#include "troupe_build_config.h"
#if TROUPE_HAVE_CUDA
#include "kernels/cuda/convert.hpp"
#endif

namespace {

using troupe::dtype;
using troupe::tensor;

/// Best of `repeats` runs of `work`, in seconds, after one warm-up run.
double best_seconds(int repeats, const std::function<void()>& work) {
  work();
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    work();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

struct buffers {
  tensor f32, f32_out, e4m3, bf16;
};

buffers make_buffers(troupe::device where, std::int64_t n) {
  tensor host = tensor::empty(dtype::f32, {n});
  for (std::int64_t i = 0; i < n; ++i)
    host.data_as<float>()[i] = static_cast<float>((i % 2001) - 1000) * 0.37f;
  buffers b{host.to(where), tensor::zeros(dtype::f32, {n}, where), {}, {}};
  b.e4m3 = troupe::convert(b.f32, dtype::f8_e4m3);
  b.bf16 = troupe::convert(b.f32, dtype::bf16);
  return b;
}

void report(const char* name, double bytes, double seconds, double copy_bandwidth) {
  std::printf("  %-12s %8.1f GB/s  %5.2f of copy\n", name, bytes / seconds / 1e9,
              bytes / seconds / copy_bandwidth);
}

void run_cpu(std::int64_t n, int repeats) {
  namespace k = troupe::kernels::cpu;
  buffers b = make_buffers(troupe::device::cpu(), n);
  const double f32_bytes = 4.0 * static_cast<double>(n);
  const double copy = 2.0 * f32_bytes / best_seconds(repeats, [&] {
                        std::memcpy(b.f32_out.data(), b.f32.data(), b.f32.nbytes());
                      });
  std::printf("cpu (1 thread), %lld elements: memcpy %.1f GB/s (read + write)\n",
              static_cast<long long>(n), copy / 1e9);
  auto* f32 = b.f32.data_as<float>();
  auto* out = b.f32_out.data_as<float>();
  auto* e4m3 = b.e4m3.data_as<std::uint8_t>();
  auto* bf16 = b.bf16.data_as<std::uint16_t>();
  report("f32 -> e4m3", 5.0 * n, best_seconds(repeats, [&] { k::f32_to_e4m3(f32, e4m3, n); }),
         copy);
  report("e4m3 -> f32", 5.0 * n, best_seconds(repeats, [&] { k::e4m3_to_f32(e4m3, out, n); }),
         copy);
  report("f32 -> bf16", 6.0 * n, best_seconds(repeats, [&] { k::f32_to_bf16(f32, bf16, n); }),
         copy);
  report("bf16 -> f32", 6.0 * n, best_seconds(repeats, [&] { k::bf16_to_f32(bf16, out, n); }),
         copy);
}

#if TROUPE_HAVE_CUDA
void run_gpu(std::int64_t n, int repeats) {
  namespace k = troupe::kernels::cuda;
  buffers b = make_buffers(troupe::device::cuda(0), n);
  auto sync = [] { troupe::cuda::synchronize(0); };
  const double f32_bytes = 4.0 * static_cast<double>(n);
  // A device-to-device cudaMemcpy returns before the copy ends: synchronize inside the timing.
  const double copy = 2.0 * f32_bytes / best_seconds(repeats, [&] {
                        b.f32_out.copy_from(b.f32);
                        sync();
                      });
  std::printf("cuda:0, %lld elements: cudaMemcpy device-to-device %.1f GB/s (read + write)\n",
              static_cast<long long>(n), copy / 1e9);
  auto* f32 = b.f32.data_as<float>();
  auto* out = b.f32_out.data_as<float>();
  auto* e4m3 = b.e4m3.data_as<std::uint8_t>();
  auto* bf16 = b.bf16.data_as<std::uint16_t>();
  report("f32 -> e4m3", 5.0 * n,
         best_seconds(repeats,
                      [&] {
                        k::f32_to_e4m3(f32, e4m3, n, nullptr);
                        sync();
                      }),
         copy);
  report("e4m3 -> f32", 5.0 * n,
         best_seconds(repeats,
                      [&] {
                        k::e4m3_to_f32(e4m3, out, n, nullptr);
                        sync();
                      }),
         copy);
  report("f32 -> bf16", 6.0 * n,
         best_seconds(repeats,
                      [&] {
                        k::f32_to_bf16(f32, bf16, n, nullptr);
                        sync();
                      }),
         copy);
  report("bf16 -> f32", 6.0 * n,
         best_seconds(repeats,
                      [&] {
                        k::bf16_to_f32(bf16, out, n, nullptr);
                        sync();
                      }),
         copy);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--gpu") {
#if TROUPE_HAVE_CUDA
    if (troupe::cuda::device_count() == 0) {
      std::printf("no GPU: %s\n", troupe::cuda::unavailable_reason().c_str());
      return 0;
    }
    run_gpu(std::int64_t{1} << 28, 20);  // 1 GiB of f32
#else
    std::printf("built without CUDA\n");
#endif
    return 0;
  }
  run_cpu(std::int64_t{1} << 25, 5);  // 128 MiB of f32
  return 0;
}
