#include "runtime/exec/cuda_gemm.hpp"

#include <cstdint>
#include <cstdio>

#include <fmt/format.h>

#include "kernels/cuda/cublaslt_gemm.hpp"
#include "kernels/cuda/per_stream.hpp"
#include "kernels/dispatch/op_timing.hpp"
#include "runtime/core/error.hpp"
#include "runtime/exec/blas_gemm.hpp"

namespace troupe {

namespace {

namespace kc = kernels::cuda;

kc::per_stream<kc::cublaslt_gemm>& all_engines() {
  // never destroyed: the CUDA runtime may be gone by the time static destructors run
  static auto* engines = new kc::per_stream<kc::cublaslt_gemm>();
  return *engines;
}

kc::gemm_matrix matrix(const DLTensor* t) {
  kc::gemm_matrix m;
  m.data = static_cast<const char*>(t->data) + t->byte_offset;
  m.type = t->dtype.code == kDLBfloat ? kc::gemm_dtype::bf16 : kc::gemm_dtype::f32;
  m.rows = t->shape[0];
  m.cols = t->shape[1];
  m.ld = t->strides != nullptr ? t->strides[0] : t->shape[1];
  return m;
}

/// `self` is the math (kc::gemm_math) as an integer.
troupe_status cuda_gemm(void* self, const troupe_exec_context* context,
                        const troupe_gemm_call* call, troupe_error* error) {
  std::int64_t m = 0, n = 0, k = 0;
  if (!check_gemm_call(*call, m, n, k, error, gemm_operand_types::f32_or_bf16))
    return TROUPE_STATUS_INVALID_ARGUMENT;
  if (context == nullptr || context->device.device_type != kDLCUDA) {
    std::snprintf(error->message, sizeof(error->message),
                  "the cuBLASLt GEMM provider runs on CUDA devices; this context is not on one");
    return TROUPE_STATUS_UNSUPPORTED;
  }
  for (const DLTensor* t : {call->a, call->b, static_cast<const DLTensor*>(call->c)})
    if (t->device.device_type != kDLCUDA || t->device.device_id != context->device.device_id) {
      std::snprintf(error->message, sizeof(error->message),
                    "a GEMM operand is not on this context's device cuda:%d",
                    context->device.device_id);
      return TROUPE_STATUS_INVALID_ARGUMENT;
    }
  try {
    kernels::op_scope timing(context, kernels::op_class::dense_gemm);
    if (timing.wants_detail())
      timing.detail(fmt::format("{}x{}x{} {}{} {}", m, n, k, call->transpose_a != 0 ? 'T' : 'N',
                                call->transpose_b != 0 ? 'T' : 'N',
                                call->a->dtype.code == kDLBfloat ? "bf16" : "f32"));
    auto& engine = all_engines().on(context->device.device_id, context->stream);
    engine.gemm(matrix(call->a), call->transpose_a != 0, matrix(call->b), call->transpose_b != 0,
                matrix(call->c), call->alpha, call->beta,
                static_cast<kc::gemm_math>(reinterpret_cast<std::uintptr_t>(self)));
    return TROUPE_STATUS_OK;
  } catch (const std::exception& e) {
    std::snprintf(error->message, sizeof(error->message), "%s", e.what());
    return TROUPE_STATUS_INTERNAL;
  }
}

void* math_of(kc::gemm_math math) {
  return reinterpret_cast<void*>(static_cast<std::uintptr_t>(math));
}

const troupe_gemm_provider exact_provider{math_of(kc::gemm_math::exact), TROUPE_GEMM_CUBLASLT,
                                          &cuda_gemm};
const troupe_gemm_provider bf16_provider{math_of(kc::gemm_math::bf16), TROUPE_GEMM_CUBLASLT_BF16,
                                         &cuda_gemm};

}  // namespace

const troupe_gemm_provider* cuda_gemm_provider() {
  return &exact_provider;
}

const troupe_gemm_provider* cuda_bf16_gemm_provider() {
  return &bf16_provider;
}

void forget_cuda_gemm_stream(void* stream) noexcept {
  try {
    all_engines().forget(stream);
  } catch (...) {
  }
}

}  // namespace troupe
