#pragma once

// The fp8 provider on a CUDA device: DeepSeek-V3's recipe for real, with the GPU casts and
// cuBLASLt's block-scaled E4M3 GEMM (kernels/cuda/fp8_gemm.hpp), FP32 accumulation. Operands are
// f32 or bf16 on the context's device; the output f32 or bf16.

#include "runtime/abi/troupe_plugin.h"

namespace troupe::plugin {

/// True when this build of the plugin has its CUDA path.
bool fp8_cuda_built();

troupe_status fp8_gemm_cuda(const troupe_exec_context* context, const troupe_gemm_call& call,
                            troupe_error* error);

/// Frees what the provider keeps for `stream` (its casts' buffers and cuBLASLt state).
void fp8_forget_stream(void* stream);

}  // namespace troupe::plugin
