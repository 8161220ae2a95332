#include "runtime/layers/norm.hpp"

#include <algorithm>

#include "kernels/cpu/rmsnorm.hpp"
#include "runtime/tensor/tensor.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/rmsnorm.hpp"
#include "kernels/dispatch/op_timing.hpp"
#endif

namespace troupe {

namespace {
constexpr std::int64_t rows_per_block = 64;
}

void rmsnorm_forward(const exec_context& context, const float* x, const float* weight, float* y,
                     float* rstd, std::int64_t rows, std::int64_t width, float eps) {
  if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
    const kernels::op_scope timing(context.abi(), kernels::op_class::elementwise);
    kernels::cuda::rmsnorm_forward(x, width, weight, y, width, rstd, rows, width, eps,
                                   context.stream());
#endif
    return;
  }
  context.pool().parallel_for(rows, 16, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::rmsnorm_forward(x + begin * width, weight, y + begin * width, rstd + begin,
                                  end - begin, width, eps);
  });
}

void rmsnorm_backward(const exec_context& context, const float* dy, const float* x,
                      const float* weight, const float* rstd, float* dx, float* dweight,
                      std::int64_t rows, std::int64_t width) {
  if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
    const kernels::op_scope timing(context.abi(), kernels::op_class::elementwise);
    const tensor scratch = tensor::empty(
        dtype::f32,
        {std::max<std::int64_t>(kernels::cuda::rmsnorm_backward_scratch(rows, width), 1)},
        context.where());
    kernels::cuda::rmsnorm_backward(dy, width, x, width, weight, rstd, dx, dweight, rows, width,
                                    scratch.data_as<float>(), context.stream());
#endif
    return;
  }
  const std::int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  std::vector<float> partial(dweight != nullptr ? static_cast<std::size_t>(blocks * width) : 0,
                             0.0f);
  context.pool().parallel_for(blocks, 1, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t block = begin; block < end; ++block) {
      const std::int64_t first = block * rows_per_block,
                         count = std::min(rows_per_block, rows - first);
      kernels::cpu::rmsnorm_backward(
          dy + first * width, x + first * width, weight, rstd + first, dx + first * width,
          dweight != nullptr ? partial.data() + block * width : nullptr, count, width);
    }
  });
  if (dweight == nullptr) return;
  for (std::int64_t block = 0; block < blocks; ++block)
    for (std::int64_t i = 0; i < width; ++i)
      dweight[i] += partial[static_cast<std::size_t>(block * width + i)];
}

}  // namespace troupe
