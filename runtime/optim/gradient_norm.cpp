#include "runtime/optim/gradient_norm.hpp"

#include <cmath>
#include <cstring>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/gradient_squares.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/gradient_norm.hpp"
#endif

namespace troupe {

namespace {

/// Each parameter's sum of squares, for those whose gradient is on a GPU: one launch per
/// device, one small copy back (the sums, not the gradients).
std::vector<double> device_sums(const std::vector<parameter*>& on_gpu,
                                [[maybe_unused]] const exec_context* context) {
  std::vector<double> sums(on_gpu.size(), 0.0);
#if TROUPE_HAVE_CUDA
  if (on_gpu.empty()) return sums;
  const device where = on_gpu.front()->grad.where();
  for (const parameter* p : on_gpu)
    if (p->grad.where() != where)
      fail("the gradients of one holder must be on one device: {} is on {}, {} on {}",
           on_gpu.front()->name, to_string(where), p->name, to_string(p->grad.where()));
  std::vector<kernels::cuda::gradient_tensor> list;
  const bool reported = context != nullptr && context->where() == where;
  for (const parameter* p : on_gpu) {
    const auto* grad = p->grad.data_as<const float>();
    const std::int64_t count = p->grad.numel();
    list.push_back(
        {grad, count,
         reported ? gradient_squares::find(grad, count, context->gradient_generation()) : nullptr});
  }
  const auto count = static_cast<std::int64_t>(list.size());
  tensor host_list = tensor::empty(dtype::u8, {count * std::int64_t{sizeof(list[0])}});
  std::memcpy(host_list.data(), list.data(), list.size() * sizeof(list[0]));
  const tensor device_list = host_list.to(where);
  const std::size_t bytes = kernels::cuda::gradient_norm_scratch_bytes(count);
  const tensor scratch = tensor::empty(dtype::u8, {static_cast<std::int64_t>(bytes)}, where);
  tensor device_result = tensor::empty(dtype::u8, {count * 8}, where);
  kernels::cuda::gradient_sums(
      static_cast<const kernels::cuda::gradient_tensor*>(device_list.data()), count,
      static_cast<double*>(device_result.data()), scratch.data(), bytes,
      cuda::current_stream(where.index));
  const tensor result = device_result.to(device::cpu());
  std::memcpy(sums.data(), result.data(), sums.size() * sizeof(double));
#endif
  return sums;
}

}  // namespace

void add_gradients(const std::vector<parameter*>& parameters, const std::set<std::string>& skip,
                   gradient_summary& summary, const exec_context* context) {
  std::vector<parameter*> trainable, on_gpu;
  for (parameter* p : parameters)
    if (p->spec.trainable()) {
      trainable.push_back(p);
      if (!p->grad.where().is_cpu()) on_gpu.push_back(p);
    }
  const std::vector<double> gpu_sums = device_sums(on_gpu, context);
  std::size_t next_gpu = 0;
  for (parameter* p : trainable) {
    double sum = 0.0;
    if (p->grad.where().is_cpu()) {
      const float* g = p->grad.data_as<const float>();
      const std::int64_t n = p->grad.numel();  // not per element: numel() multiplies the shape
      for (std::int64_t i = 0; i < n; ++i)
        sum += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    } else {
      sum = gpu_sums[next_gpu++];
    }
    if (!std::isfinite(sum) && summary.non_finite.empty()) summary.non_finite = p->name;
    if (!skip.count(p->name)) summary.norm_squared += sum;
  }
}

}  // namespace troupe
