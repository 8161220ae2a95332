#include "kernels/cuda/elementwise.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

__global__ void add_kernel(float* y, const float* x, std::int64_t count) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < count) y[i] += x[i];
}

__global__ void sum_slices_kernel(const float* x, std::int64_t slices, std::int64_t count,
                                  float* y) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float sum = 0.0f;
  for (std::int64_t s = 0; s < slices; ++s) sum += x[s * count + i];
  y[i] = sum;
}

/// Block b zeros span b: 16-byte stores from its first 16-byte boundary, bytes around them.
__global__ void zero_spans_kernel(const zero_span* spans) {
  const zero_span span = spans[blockIdx.x];
  auto* bytes = static_cast<unsigned char*>(span.data);
  const std::uint64_t misaligned = (16 - reinterpret_cast<std::uintptr_t>(bytes) % 16) % 16;
  const std::uint64_t head = misaligned < span.bytes ? misaligned : span.bytes;
  const std::uint64_t words = (span.bytes - head) / 16;
  auto* aligned = reinterpret_cast<uint4*>(bytes + head);
  for (std::uint64_t i = threadIdx.x; i < words; i += blockDim.x) aligned[i] = uint4{0, 0, 0, 0};
  const std::uint64_t tail = head + words * 16;
  if (threadIdx.x < head) bytes[threadIdx.x] = 0;
  if (tail + threadIdx.x < span.bytes) bytes[tail + threadIdx.x] = 0;
}

// NOTES: 16-byte moves when the two ends share their alignment (a head of single bytes brings
// both to 16), else 4-byte or single-byte moves; gradients and values are f32 arrays, so the
// slower paths only meet odd slices.
__global__ void copy_spans_kernel(const copy_span* spans) {
  const copy_span span = spans[blockIdx.x];
  auto* to = static_cast<unsigned char*>(span.destination);
  const auto* from = static_cast<const unsigned char*>(span.source);
  const auto to_address = reinterpret_cast<std::uintptr_t>(to);
  const auto from_address = reinterpret_cast<std::uintptr_t>(from);
  if (to_address % 16 == from_address % 16) {
    const std::uint64_t misaligned = (16 - to_address % 16) % 16;
    const std::uint64_t head = misaligned < span.bytes ? misaligned : span.bytes;
    const std::uint64_t words = (span.bytes - head) / 16;
    const auto* source = reinterpret_cast<const uint4*>(from + head);
    auto* destination = reinterpret_cast<uint4*>(to + head);
    for (std::uint64_t i = threadIdx.x; i < words; i += blockDim.x) destination[i] = source[i];
    const std::uint64_t tail = head + words * 16;
    if (threadIdx.x < head) to[threadIdx.x] = from[threadIdx.x];
    if (tail + threadIdx.x < span.bytes) to[tail + threadIdx.x] = from[tail + threadIdx.x];
  } else if (to_address % 4 == 0 && from_address % 4 == 0 && span.bytes % 4 == 0) {
    const auto* source = reinterpret_cast<const std::uint32_t*>(from);
    auto* destination = reinterpret_cast<std::uint32_t*>(to);
    for (std::uint64_t i = threadIdx.x; i < span.bytes / 4; i += blockDim.x)
      destination[i] = source[i];
  } else {
    for (std::uint64_t i = threadIdx.x; i < span.bytes; i += blockDim.x) to[i] = from[i];
  }
}

}  // namespace

void copy_spans(const copy_span* spans, std::int64_t count, void* stream) {
  if (count == 0) return;
  copy_spans_kernel<<<static_cast<unsigned>(count), 512, 0, as_stream(stream)>>>(spans);
  TROUPE_CUDA_LAUNCHED();
}

void zero_spans(const zero_span* spans, std::int64_t count, void* stream) {
  if (count == 0) return;
  zero_spans_kernel<<<static_cast<unsigned>(count), 512, 0, as_stream(stream)>>>(spans);
  TROUPE_CUDA_LAUNCHED();
}

void add(float* y, const float* x, std::int64_t count, void* stream) {
  if (count == 0) return;
  add_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(y, x, count);
  TROUPE_CUDA_LAUNCHED();
}

void sum_slices(const float* x, std::int64_t slices, std::int64_t count, float* y, void* stream) {
  if (count == 0) return;
  sum_slices_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(x, slices, count,
                                                                                   y);
  TROUPE_CUDA_LAUNCHED();
}

void copy_2d(float* dst, std::int64_t ld_dst, const float* src, std::int64_t ld_src,
             std::int64_t rows, std::int64_t cols, void* stream) {
  if (rows * cols == 0) return;
  TROUPE_CUDA_CHECK(cudaMemcpy2DAsync(dst, static_cast<std::size_t>(ld_dst) * sizeof(float), src,
                                      static_cast<std::size_t>(ld_src) * sizeof(float),
                                      static_cast<std::size_t>(cols) * sizeof(float),
                                      static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice,
                                      as_stream(stream)));
}

}  // namespace troupe::kernels::cuda
