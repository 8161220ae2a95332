#pragma once

#include <cstdint>

#include "runtime/abi/troupe_plugin.h"

namespace troupe {

/// The runtime's own FP32 GEMM provider: OpenBLAS sgemm on the CPU. Every linear layer calls
/// through a troupe_gemm_provider; this is the one used when the topology asks for no other.
const troupe_gemm_provider* blas_gemm_provider();

/// The operand types a provider takes.
enum class gemm_operand_types {
  f32,          ///< f32 x f32 -> f32
  f32_or_bf16,  ///< that, or bf16 x bf16 -> bf16 or f32
};

/// Checks a GEMM call's operands (2-D, unit inner stride, matching extents, dtype) and writes
/// m, n, k. Returns false with `error` filled on a mismatch. Shared by every provider.
bool check_gemm_call(const troupe_gemm_call& call, std::int64_t& m, std::int64_t& n,
                     std::int64_t& k, troupe_error* error,
                     gemm_operand_types types = gemm_operand_types::f32);

}  // namespace troupe
