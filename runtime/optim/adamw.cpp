#include "runtime/optim/adamw.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "runtime/core/error.hpp"
#include "runtime/tensor/bf16.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/adamw.hpp"
#include "kernels/dispatch/op_timing.hpp"
#endif

namespace troupe {

void adamw::attach(parameter_store& store) {
  where_ = store.where();
  for (parameter* p : store.all()) {
    if (!p->spec.trainable() || !p->grad.defined()) continue;
    slots_.push_back({p, tensor::zeros(dtype::bf16, p->value.shape(), where_),
                      tensor::zeros(dtype::bf16, p->value.shape(), where_), p->value.dim() >= 2});
    largest_ = std::max(largest_, p->value.numel());
  }
  if (where_.is_cpu() || slots_.empty()) return;
#if TROUPE_HAVE_CUDA
  // NOTES: the descriptors go to the GPU once; a step then is one launch over every tensor.
  std::vector<kernels::cuda::adamw_tensor> descriptors;
  for (slot& s : slots_)
    descriptors.push_back({s.p->value.data_as<float>(), s.p->grad.data_as<const float>(),
                           s.exp_avg.data_as<std::uint16_t>(),
                           s.exp_avg_sq.data_as<std::uint16_t>(), s.p->value.numel(),
                           s.decay ? 1 : 0});
  const auto bytes = static_cast<std::int64_t>(descriptors.size() * sizeof(descriptors[0]));
  tensor host = tensor::empty(dtype::u8, {bytes});
  std::memcpy(host.data(), descriptors.data(), static_cast<std::size_t>(bytes));
  device_slots_ = host.to(where_);
#endif
}

void adamw::step(double lr, double grad_scale, std::int64_t step, const exec_context& context) {
  if (where_.is_cpu()) return this->step(lr, grad_scale, step, context.pool());
  if (context.where() != where_)
    fail("AdamW: the parameters are on {}, the step computes on {}", to_string(where_),
         to_string(context.where()));
  if (step < 1) fail("AdamW steps count from 1, got {}", step);
  parameters_changed();
#if TROUPE_HAVE_CUDA
  const kernels::op_scope timing(context.abi(), kernels::op_class::optimizer);
  const double b1 = settings_.beta1, b2 = settings_.beta2;
  kernels::cuda::adamw_hyper hyper;
  hyper.lr = static_cast<float>(lr);
  hyper.beta1 = static_cast<float>(b1);
  hyper.beta2 = static_cast<float>(b2);
  hyper.eps = static_cast<float>(settings_.epsilon);
  hyper.weight_decay = static_cast<float>(settings_.weight_decay);
  hyper.correction1 = static_cast<float>(1.0 - std::pow(b1, static_cast<double>(step)));
  hyper.correction2 = static_cast<float>(1.0 - std::pow(b2, static_cast<double>(step)));
  hyper.grad_scale = static_cast<float>(grad_scale);
  kernels::cuda::adamw_step(static_cast<const kernels::cuda::adamw_tensor*>(device_slots_.data()),
                            static_cast<std::int64_t>(slots_.size()), largest_, hyper, nullptr,
                            context.stream());
#endif
}

void adamw::step(double lr, double grad_scale, std::int64_t step, thread_pool& pool) {
  if (!where_.is_cpu())
    fail("AdamW: the parameters are on {}; step with an exec context there", to_string(where_));
  if (step < 1) fail("AdamW steps count from 1, got {}", step);
  parameters_changed();
  const double b1 = settings_.beta1, b2 = settings_.beta2;
  const float beta1 = static_cast<float>(b1), beta2 = static_cast<float>(b2);
  const float correction1 = static_cast<float>(1.0 - std::pow(b1, static_cast<double>(step)));
  const float correction2 = static_cast<float>(1.0 - std::pow(b2, static_cast<double>(step)));
  const float rate = static_cast<float>(lr), scale = static_cast<float>(grad_scale);
  const float eps = static_cast<float>(settings_.epsilon);
  for (slot& s : slots_) {
    float* p = s.p->value.data_as<float>();
    const float* g = s.p->grad.data_as<const float>();
    std::uint16_t* m = s.exp_avg.data_as<std::uint16_t>();
    std::uint16_t* v = s.exp_avg_sq.data_as<std::uint16_t>();
    const float decay = s.decay ? 1.0f - rate * static_cast<float>(settings_.weight_decay) : 1.0f;
    pool.parallel_for(s.p->value.numel(), 4096, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) {
        const float grad = g[i] * scale;
        const float m1 = beta1 * bf16_to_float(m[i]) + (1.0f - beta1) * grad;
        const float v1 = beta2 * bf16_to_float(v[i]) + (1.0f - beta2) * grad * grad;
        p[i] = p[i] * decay - rate * (m1 / correction1) / (std::sqrt(v1 / correction2) + eps);
        m[i] = float_to_bf16(m1);
        v[i] = float_to_bf16(v1);
      }
    });
  }
}

std::vector<std::pair<std::string, tensor>> adamw::state() const {
  std::vector<std::pair<std::string, tensor>> out;
  for (const slot& s : slots_) {
    out.emplace_back(s.p->name + ".exp_avg", s.exp_avg);
    out.emplace_back(s.p->name + ".exp_avg_sq", s.exp_avg_sq);
  }
  return out;
}

void adamw::load_state(const std::vector<std::pair<std::string, tensor>>& tensors) {
  std::map<std::string, const tensor*> by_name;
  for (const auto& [name, t] : tensors) by_name[name] = &t;
  for (slot& s : slots_)
    for (auto [suffix, target] :
         {std::pair{".exp_avg", &s.exp_avg}, {".exp_avg_sq", &s.exp_avg_sq}}) {
      auto it = by_name.find(s.p->name + suffix);
      if (it == by_name.end()) fail("optimizer state: no {}{}", s.p->name, suffix);
      const tensor& source = *it->second;
      if (source.type() != dtype::bf16 || source.shape() != target->shape())
        fail("optimizer state: {}{} is {}, expected bf16 of the parameter's shape", s.p->name,
             suffix, source.describe());
      target->copy_from(source);
    }
}

std::int64_t adamw::parameter_count() const {
  std::int64_t n = 0;
  for (const slot& s : slots_) n += s.p->value.numel();
  return n;
}

}  // namespace troupe
