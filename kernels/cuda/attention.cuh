#pragma once

// What the FP32 (attention.cu) and BF16 (attention_bf16.cu) flash attention kernels share: their
// operands, the addressing of a row, and the backward's delta. Internal to kernels/cuda.

#include <cstdint>

#include "kernels/cuda/attention.hpp"
#include "kernels/cuda/launch.cuh"

namespace troupe::kernels::cuda::flash {

struct operands {
  attention_problem p;
  attention_operand q, k, rope, v;
};

struct backward_operands {
  operands in;
  attention_operand d_out;
  const float* lse;
  const float* delta;
};

__device__ inline const float* row_of(const attention_operand& x, std::int64_t b, std::int64_t h,
                                      std::int64_t row) {
  return x.data + b * x.batch_stride + h * x.head_stride + row * x.row_stride;
}

/// delta[b, h, i] = dO_i . O_i in FP32 for every row (one warp each), on `stream`.
void launch_delta(const attention_problem& p, attention_operand o, attention_operand d_o,
                  float* delta, void* stream);

}  // namespace troupe::kernels::cuda::flash
