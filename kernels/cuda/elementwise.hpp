#pragma once

// The small elementwise passes between the model's larger ops on a CUDA device: residual adds,
// sums over heads, strided copies. Device pointers; `stream` is a cudaStream_t.

#include <cstdint>

namespace troupe::kernels::cuda {

/// y[i] += x[i] for i < count.
void add(float* y, const float* x, std::int64_t count, void* stream);

/// y[i] = sum over s < slices, in order, of x[s * count + i].
void sum_slices(const float* x, std::int64_t slices, std::int64_t count, float* y, void* stream);

/// A piece of device memory for zero_spans: `bytes` at `data`.
struct zero_span {
  void* data;
  std::uint64_t bytes;
};

/// Zeros every span of the device array `spans`, one block per span, in one launch: what clears
/// a model's thousands of gradients (one cudaMemsetAsync each took about 3 us of GPU time).
void zero_spans(const zero_span* spans, std::int64_t count, void* stream);

/// A copy for copy_spans: `bytes` from `source` to `destination`.
struct copy_span {
  void* destination;
  const void* source;
  std::uint64_t bytes;
};

/// Copies every span of the device array `spans`, one block per span, in one launch: what packs a
/// model's thousands of gradients into a collective's buffer and back. Spans of a few MB at most
/// (cut larger ones): a block moves its span alone.
void copy_spans(const copy_span* spans, std::int64_t count, void* stream);

/// dst[r * ld_dst + c] = src[r * ld_src + c] for r < rows, c < cols.
void copy_2d(float* dst, std::int64_t ld_dst, const float* src, std::int64_t ld_src,
             std::int64_t rows, std::int64_t cols, void* stream);

}  // namespace troupe::kernels::cuda
