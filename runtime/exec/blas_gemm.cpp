#include "runtime/exec/blas_gemm.hpp"

#include <cstdio>

#include "kernels/cpu/gemm.hpp"

namespace troupe {

namespace {

bool is_matrix(const DLTensor* t, std::uint8_t code, std::uint8_t bits) {
  return t != nullptr && t->ndim == 2 && t->dtype.code == code && t->dtype.bits == bits &&
         t->dtype.lanes == 1 && (t->strides == nullptr || t->strides[1] == 1);
}

bool is_f32_matrix(const DLTensor* t) {
  return is_matrix(t, kDLFloat, 32);
}

bool is_bf16_matrix(const DLTensor* t) {
  return is_matrix(t, kDLBfloat, 16);
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
                     std::int64_t& k, troupe_error* error, gemm_operand_types types) {
  const bool f32 = is_f32_matrix(call.a) && is_f32_matrix(call.b) && is_f32_matrix(call.c);
  const bool bf16 = types == gemm_operand_types::f32_or_bf16 && is_bf16_matrix(call.a) &&
                    is_bf16_matrix(call.b) && (is_bf16_matrix(call.c) || is_f32_matrix(call.c));
  if (!f32 && !bf16) {
    std::snprintf(error->message, sizeof(error->message), "%s",
                  types == gemm_operand_types::f32
                      ? "GEMM operands must be 2-D f32 tensors with unit inner stride"
                      : "GEMM operands must be 2-D tensors with unit inner stride: f32 x f32 -> "
                        "f32, or bf16 x bf16 -> bf16 or f32");
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
