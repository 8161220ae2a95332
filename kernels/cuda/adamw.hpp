#pragma once

// AdamW with FP32 master weights and BF16 moments on a CUDA device, as one multi-tensor launch
// per step, the same update as runtime/optim/adamw.hpp:
//   p <- p * (1 - lr * wd)  (tensors that decay)
//   m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2     (g: gradient times the clip scale)
//   p <- p - lr * (m / c1) / (sqrt(v / c2) + eps)         (m, v stored back rounded to BF16)
// A tensor may name a BF16 copy of its values, which the same pass writes (rounded to nearest
// even) instead of a pass of its own after the step. The clip scale is read from device memory
// (gradient_norm.hpp computes it there), so a step never waits for the host. Device pointers;
// `stream` is a cudaStream_t.

#include <cstdint>

namespace troupe::kernels::cuda {

/// One parameter tensor of the step (an array of these lives on the device, uploaded once:
/// the pointers do not change between steps).
struct adamw_tensor {
  float* value = nullptr;
  const float* grad = nullptr;
  std::uint16_t* exp_avg = nullptr;     ///< bf16 bits
  std::uint16_t* exp_avg_sq = nullptr;  ///< bf16 bits
  /// Where the new values go rounded to BF16 as well (a layer's BF16 copy of its weights), or
  /// null.
  std::uint16_t* bf16_copy = nullptr;
  std::int64_t count = 0;
  std::int32_t decays = 0;       ///< 1: weight decay applies (matrices), 0: not (norm weights)
  std::int64_t first_block = 0;  ///< the tensor's first block in the launch (adamw_plan sets it)
};

struct adamw_hyper {
  float lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  float correction1 = 1, correction2 = 1;  ///< 1 - beta^step, computed by the host in float64
  float grad_scale = 1;  ///< the clip scale when it is known on the host (no device pointer)
};

/// Gives each of the host array's tensors its first block (blocks in proportion to its size);
/// returns the blocks of the whole launch.
std::int64_t adamw_plan(adamw_tensor* tensors, std::int64_t count);

/// One step over tensors[0, count) (a device array copied from one adamw_plan made); `blocks` is
/// what adamw_plan returned. grad_scale points at one float on the device (null:
/// hyper.grad_scale).
void adamw_step(const adamw_tensor* tensors, std::int64_t count, std::int64_t blocks,
                const adamw_hyper& hyper, const float* grad_scale, void* stream);

}  // namespace troupe::kernels::cuda
