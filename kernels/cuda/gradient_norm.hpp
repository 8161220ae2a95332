#pragma once

// The global gradient norm and its clip scale on a CUDA device, so clipping never waits for the
// host: the sum of squares of every gradient in float64, in an order fixed by the launch shape
// (the same bits every run), then scale = clip / (norm + 1e-6) when norm > clip, else 1 (the
// coordinator's rule). A non-finite gradient makes the sum non-finite, which the host sees when
// it reads the norm back with the step's other scalars. Device pointers; `stream` is a
// cudaStream_t.

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda {

struct gradient_tensor {
  const float* data = nullptr;
  std::int64_t count = 0;
  /// When set, the tensor's sum of squares as its writer computed it (one double on the device):
  /// read instead of the tensor.
  const double* squares = nullptr;
};

std::size_t gradient_norm_scratch_bytes(std::int64_t tensors);

/// *norm_squared = sum over tensors[0, count) (a device array) of their squared elements.
void gradient_norm_squared(const gradient_tensor* tensors, std::int64_t count, double* norm_squared,
                           void* scratch, std::size_t scratch_bytes, void* stream);

/// sums[t] = the sum of squares of tensors[t] (float64, a fixed order) for t < count: what a
/// holder needs to add its part of the global norm and to name a non-finite gradient.
void gradient_sums(const gradient_tensor* tensors, std::int64_t count, double* sums, void* scratch,
                   std::size_t scratch_bytes, void* stream);

/// *scale = clip / (sqrt(*norm_squared) + 1e-6) when clip > 0 and the norm exceeds it, else 1.
void clip_scale(const double* norm_squared, double clip, float* scale, void* stream);

}  // namespace troupe::kernels::cuda
