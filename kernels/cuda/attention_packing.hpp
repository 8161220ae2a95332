#pragma once

// Attention operands moved between the model's FP32 tensors (any strides, the rope key apart) and
// packed BF16 copies, each (batch, head) slice one contiguous [length][d] block: what the BF16
// flash kernels (attention_bf16.cu) and cuDNN's fused attention (attention_cudnn.cpp) read and
// write. Internal to kernels/cuda. Device pointers; `stream` is a cudaStream_t.

#include <cstdint>

#include "kernels/cuda/attention.hpp"

namespace troupe::kernels::cuda {

/// Columns [0, width) of every row of `from` into columns [col0, col0 + width) of the packed
/// rows `to` (`d` wide, BF16 bits, 8-byte aligned). width, col0 and d are multiples of 4.
struct attention_pack {
  attention_operand from;
  int width = 0;
  std::uint16_t* to = nullptr;
  int d = 0, col0 = 0;
};

/// Columns [col0, col0 + width) of the packed rows `from` (`d` wide) into columns [0, width) of
/// every row of `to`, in FP32 (`from` 8-byte aligned). width, col0 and d are multiples of 4.
struct attention_unpack {
  const std::uint16_t* from = nullptr;
  int d = 0, col0 = 0, width = 0;
  attention_result to;
};

inline constexpr int max_attention_pack_jobs = 6;

/// Rows of every (batch, head) slice: batch * heads * length.
constexpr std::int64_t attention_slice_rows(const attention_problem& p) {
  return p.batch * p.heads * p.length;
}

/// Up to max_attention_pack_jobs copies, one launch for all of them.
void pack_attention_bf16(const attention_problem& p, const attention_pack* jobs, int count,
                         void* stream);
void unpack_attention_bf16(const attention_problem& p, const attention_unpack* jobs, int count,
                           void* stream);

}  // namespace troupe::kernels::cuda
