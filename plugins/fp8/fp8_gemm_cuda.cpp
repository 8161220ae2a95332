#include "plugins/fp8/fp8_gemm_cuda.hpp"

#include "kernels/cuda/fp8_gemm.hpp"
#include "kernels/cuda/per_stream.hpp"
#include "plugins/common/plugin_support.hpp"

namespace troupe::plugin {

namespace {

namespace kc = kernels::cuda;

kc::per_stream<kc::fp8_gemm_engine>& engines() {
  static auto* all = new kc::per_stream<kc::fp8_gemm_engine>();  // outlives static destruction
  return *all;
}

bool matrix_of(const DLTensor* t, int device, kc::gemm_matrix& out) {
  if (t == nullptr || t->ndim != 2 || t->dtype.lanes != 1 ||
      (t->strides != nullptr && t->strides[1] != 1) || t->device.device_type != kDLCUDA ||
      t->device.device_id != device)
    return false;
  if (t->dtype.code == kDLFloat && t->dtype.bits == 32)
    out.type = kc::gemm_dtype::f32;
  else if (t->dtype.code == kDLBfloat && t->dtype.bits == 16)
    out.type = kc::gemm_dtype::bf16;
  else
    return false;
  out.data = static_cast<const char*>(t->data) + t->byte_offset;
  out.rows = t->shape[0];
  out.cols = t->shape[1];
  out.ld = t->strides != nullptr ? t->strides[0] : t->shape[1];
  return true;
}

}  // namespace

bool fp8_cuda_built() {
  return true;
}

troupe_status fp8_gemm_cuda(const troupe_exec_context* context, const troupe_gemm_call& call,
                            troupe_error* error) {
  const int device = context->device.device_id;
  kc::gemm_matrix a, b, c;
  if (!matrix_of(call.a, device, a) || !matrix_of(call.b, device, b) ||
      !matrix_of(call.c, device, c))
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "fp8 GEMM operands on cuda:{} must be 2-D f32 or bf16 tensors on that device "
                "with unit inner stride",
                device);
  return guarded(error, [&] {
    kc::dense_operand left{a, call.transpose_a != 0, call.weight_operand == 1};
    kc::dense_operand right{b, call.transpose_b != 0, call.weight_operand == 2};
    engines().on(device, context->stream).gemm(left, right, c, call.alpha, call.beta);
    return TROUPE_STATUS_OK;
  });
}

void fp8_forget_stream(void* stream) {
  engines().forget(stream);
}

}  // namespace troupe::plugin
