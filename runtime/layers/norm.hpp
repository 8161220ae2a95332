#pragma once

// RMSNorm over the hidden dimension of [tokens, width] activations, rows split over the pool (or
// on the context's GPU). Backward accumulates into dx and into the weight's gradient; weight
// gradients are summed per fixed block of rows and then in block order, so the result does not
// depend on the threads.

#include <cstdint>
#include <vector>

#include "runtime/exec/exec_context.hpp"

namespace troupe {

void rmsnorm_forward(const exec_context& context, const float* x, const float* weight, float* y,
                     float* rstd, std::int64_t rows, std::int64_t width, float eps);

void rmsnorm_backward(const exec_context& context, const float* dy, const float* x,
                      const float* weight, const float* rstd, float* dx, float* dweight,
                      std::int64_t rows, std::int64_t width);

}  // namespace troupe
