#include "runtime/exec/blas_gemm.hpp"

#include <cstdio>

#include "kernels/cpu/gemm.hpp"

namespace troupe {

namespace {

bool is_f32_matrix(const DLTensor* t) {
  return t != nullptr && t->ndim == 2 && t->dtype.code == kDLFloat && t->dtype.bits == 32 &&
         t->dtype.lanes == 1 && (t->strides == nullptr || t->strides[1] == 1);
}

std::int64_t leading_dimension(const DLTensor* t) {
  return t->strides != nullptr ? t->strides[0] : t->shape[1];
}

template <class T>
T* element_pointer(const DLTensor* t) {
  return reinterpret_cast<T*>(static_cast<char*>(t->data) + t->byte_offset);
}

troupe_status blas_gemm(void*, const troupe_exec_context* context, const troupe_gemm_call* call,
                        troupe_error* error) {
  std::int64_t m = 0, n = 0, k = 0;
  if (!check_gemm_call(*call, m, n, k, error)) return TROUPE_STATUS_INVALID_ARGUMENT;
  if (context != nullptr && context->device.device_type != kDLCPU) {
    std::snprintf(error->message, sizeof(error->message),
                  "the BLAS GEMM provider runs on the CPU; this context is on a CUDA device");
    return TROUPE_STATUS_UNSUPPORTED;
  }
  kernels::cpu::gemm_shape shape{
      call->transpose_a != 0,     call->transpose_b != 0,    m, n, k, leading_dimension(call->a),
      leading_dimension(call->b), leading_dimension(call->c)};
  kernels::cpu::sgemm_on_pool(context != nullptr ? context->pool : nullptr, shape, call->alpha,
                              element_pointer<const float>(call->a),
                              element_pointer<const float>(call->b), call->beta,
                              element_pointer<float>(call->c));
  return TROUPE_STATUS_OK;
}

const troupe_gemm_provider provider{nullptr, "blas-f32", &blas_gemm};

}  // namespace

const troupe_gemm_provider* blas_gemm_provider() {
  return &provider;
}

bool check_gemm_call(const troupe_gemm_call& call, std::int64_t& m, std::int64_t& n,
                     std::int64_t& k, troupe_error* error) {
  if (!is_f32_matrix(call.a) || !is_f32_matrix(call.b) || !is_f32_matrix(call.c)) {
    std::snprintf(error->message, sizeof(error->message),
                  "GEMM operands must be 2-D f32 tensors with unit inner stride");
    return false;
  }
  m = call.transpose_a ? call.a->shape[1] : call.a->shape[0];
  k = call.transpose_a ? call.a->shape[0] : call.a->shape[1];
  const std::int64_t k_b = call.transpose_b ? call.b->shape[1] : call.b->shape[0];
  n = call.transpose_b ? call.b->shape[0] : call.b->shape[1];
  if (k != k_b || call.c->shape[0] != m || call.c->shape[1] != n) {
    std::snprintf(error->message, sizeof(error->message),
                  "GEMM extents disagree: op(A) is %lldx%lld, op(B) is %lldx%lld, C is %lldx%lld",
                  static_cast<long long>(m), static_cast<long long>(k), static_cast<long long>(k_b),
                  static_cast<long long>(n), static_cast<long long>(call.c->shape[0]),
                  static_cast<long long>(call.c->shape[1]));
    return false;
  }
  return true;
}

}  // namespace troupe
