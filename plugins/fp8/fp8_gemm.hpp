#pragma once

// DeepSeek-V3's fine-grained FP8 GEMM, emulated exactly on the host. Each operand is quantised to
// E4M3 the way the report does it for the GEMM at hand, dequantised, and multiplied in FP32:
//   - weights: one scale per 128x128 block;
//   - activations (Fprop) and gradients (Dgrad, Wgrad): one scale per 1x128 tile along the
//     reduction dimension K of this GEMM (along a row of a [M, K] operand, down a column of a
//     [K, N] one).
// What is emulated is the quantisation error, which is what training sees; the GPU path
// (tensor-core FP8 with FP32 accumulation, DeepGEMM style) comes later behind the same provider
// interface and rounds its partial sums differently.

#include "runtime/abi/troupe_plugin.h"

namespace troupe::plugin {

troupe_status fp8_gemm(const troupe_exec_context* context, const troupe_gemm_call& call,
                       troupe_error* error);

}  // namespace troupe::plugin
