#pragma once

// The runtime's GEMM provider on CUDA devices: cuBLASLt, with FP32 operands (true FP32, for
// parity with the CPU path) or BF16 operands with FP32 accumulation and a BF16 or FP32 output.
// Each stream gets its own cuBLASLt state (handle, workspace, algorithm cache).

#include "runtime/abi/troupe_plugin.h"

namespace troupe {

/// The provider exec contexts on `cuda:N` use when the topology asks for no other. In a build
/// without CUDA its calls fail with "built without CUDA".
const troupe_gemm_provider* cuda_gemm_provider();

/// The provider of model.precision = "bf16" on `cuda:N`: f32 operands rounded to BF16 on the
/// tensor cores, FP32 accumulation and output (TROUPE_GEMM_CUBLASLT_BF16).
const troupe_gemm_provider* cuda_bf16_gemm_provider();

/// Frees the cuBLASLt state kept for `stream` (an exec context calls it before destroying its
/// stream).
void forget_cuda_gemm_stream(void* stream) noexcept;

}  // namespace troupe
