#include "kernels/cpu/linear.hpp"

namespace troupe::kernels {

troupe_status provider_gemm(const troupe_exec_context* context, troupe_gemm_pass pass,
                            int weight_operand, bool transpose_a, matrix_view a, bool transpose_b,
                            matrix_view b, float* c, std::int64_t c_rows, std::int64_t c_cols,
                            std::int64_t ldc, float beta, troupe_error* error) {
  std::int64_t shape_a[2] = {a.rows, a.cols}, strides_a[2] = {a.ld, 1};
  std::int64_t shape_b[2] = {b.rows, b.cols}, strides_b[2] = {b.ld, 1};
  std::int64_t shape_c[2] = {c_rows, c_cols}, strides_c[2] = {ldc, 1};
  const DLDataType f32{kDLFloat, 32, 1};
  DLTensor ta{const_cast<float*>(a.data), context->device, 2, f32, shape_a, strides_a, 0};
  DLTensor tb{const_cast<float*>(b.data), context->device, 2, f32, shape_b, strides_b, 0};
  DLTensor tc{c, context->device, 2, f32, shape_c, strides_c, 0};
  const troupe_gemm_call call{sizeof(troupe_gemm_call), &ta,  &tb,  &tc,  transpose_a ? 1 : 0,
                              transpose_b ? 1 : 0,      1.0f, beta, pass, weight_operand};
  return context->gemm->gemm(context->gemm->self, context, &call, error);
}

troupe_status linear_forward(const troupe_exec_context* context, const float* x, std::int64_t ldx,
                             const float* weight, float* y, std::int64_t ldy, std::int64_t rows,
                             std::int64_t in, std::int64_t out, bool accumulate,
                             troupe_error* error) {
  if (rows == 0) return TROUPE_STATUS_OK;
  return provider_gemm(context, TROUPE_GEMM_FPROP, 2, false, {x, rows, in, ldx}, true,
                       {weight, out, in, in}, y, rows, out, ldy, accumulate ? 1.0f : 0.0f, error);
}

troupe_status linear_backward(const troupe_exec_context* context, const float* dy,
                              std::int64_t lddy, const float* x, std::int64_t ldx,
                              const float* weight, float* dx, std::int64_t lddx, float* dweight,
                              std::int64_t rows, std::int64_t in, std::int64_t out,
                              troupe_error* error, bool accumulate_dx) {
  if (rows == 0) return TROUPE_STATUS_OK;
  if (dx != nullptr) {
    const troupe_status status = provider_gemm(
        context, TROUPE_GEMM_DGRAD, 2, false, {dy, rows, out, lddy}, false, {weight, out, in, in},
        dx, rows, in, lddx, accumulate_dx ? 1.0f : 0.0f, error);
    if (status != TROUPE_STATUS_OK) return status;
  }
  if (dweight != nullptr)
    return provider_gemm(context, TROUPE_GEMM_WGRAD, 0, true, {dy, rows, out, lddy}, false,
                         {x, rows, in, ldx}, dweight, out, in, in, 1.0f, error);
  return TROUPE_STATUS_OK;
}

}  // namespace troupe::kernels
