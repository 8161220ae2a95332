#include "kernels/cpu/rmsnorm.hpp"

#include <cmath>

namespace troupe::kernels::cpu {

void rmsnorm_forward(const float* x, const float* weight, float* y, float* rstd, std::int64_t rows,
                     std::int64_t dim, float eps) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    // NOTES: the mean of squares is accumulated in double: rows of thousands of values lose
    // bits in float, and transformers computes this reduction in float32 over a tree order
    // we cannot reproduce anyway; double keeps us within float rounding of the exact value.
    double sum = 0.0;
    for (std::int64_t i = 0; i < dim; ++i)
      sum += static_cast<double>(xr[i]) * static_cast<double>(xr[i]);
    const float inverse = static_cast<float>(
        1.0 / std::sqrt(sum / static_cast<double>(dim) + static_cast<double>(eps)));
    for (std::int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inverse);
    if (rstd != nullptr) rstd[r] = inverse;
  }
}

void rmsnorm_backward(const float* dy, const float* x, const float* weight, const float* rstd,
                      float* dx, float* dweight, std::int64_t rows, std::int64_t dim) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* dyr = dy + r * dim;
    const float* xr = x + r * dim;
    float* dxr = dx + r * dim;
    const float inverse = rstd[r];
    // With n = x * inverse: dL/dx = inverse * (weight*dy - n * mean(weight*dy * n)).
    double dot = 0.0;
    for (std::int64_t i = 0; i < dim; ++i)
      dot += static_cast<double>(weight[i] * dyr[i]) * static_cast<double>(xr[i] * inverse);
    const float mean_dot = static_cast<float>(dot / static_cast<double>(dim));
    for (std::int64_t i = 0; i < dim; ++i) {
      const float normalized = xr[i] * inverse;
      dxr[i] += inverse * (weight[i] * dyr[i] - normalized * mean_dot);
      if (dweight != nullptr) dweight[i] += dyr[i] * normalized;
    }
  }
}

}  // namespace troupe::kernels::cpu
