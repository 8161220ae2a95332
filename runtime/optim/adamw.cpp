#include "runtime/optim/adamw.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <optional>

#include "runtime/core/error.hpp"
#include "runtime/exec/bf16_copies.hpp"
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
                      tensor::zeros(dtype::bf16, p->value.shape(), where_), p->value.dim() >= 2,
                      element_range{0, p->value.numel()}});
  }
  upload_slots();
}

void adamw::keep_ranges(const std::map<std::string, element_range>& ranges) {
  for (slot& s : slots_) {
    auto it = ranges.find(s.p->name);
    if (it == ranges.end()) continue;
    const element_range r = it->second;
    if (r.begin < 0 || r.end < r.begin || r.end > s.p->value.numel())
      fail("AdamW: range [{}, {}) of {} lies outside its {} elements", r.begin, r.end, s.p->name,
           s.p->value.numel());
    s.range = r;
    s.sliced = true;
    s.exp_avg = tensor::zeros(dtype::bf16, {r.size()}, where_);
    s.exp_avg_sq = tensor::zeros(dtype::bf16, {r.size()}, where_);
  }
  upload_slots();
}

void adamw::upload_slots() {
  device_blocks_ = 0;
  if (where_.is_cpu() || slots_.empty()) return;
#if TROUPE_HAVE_CUDA
  // NOTES: the descriptors go to the GPU once (again when a layer asks for a BF16 copy or
  // withdraws one); a step then is one launch over every tensor.
  copies_seen_ = bf16_copies::changes();
  copied_.clear();
  values_.clear();
  std::vector<kernels::cuda::adamw_tensor> descriptors;
  for (slot& s : slots_) {
    const float* value = s.p->value.data_as<float>();
    std::uint16_t* copy = s.sliced ? nullptr : bf16_copies::find(value, s.p->value.numel());
    if (copy != nullptr) copied_.push_back(value);
    values_.push_back(value);
    descriptors.push_back(
        {s.p->value.data_as<float>() + s.range.begin,
         s.p->grad.data_as<const float>() + s.range.begin, s.exp_avg.data_as<std::uint16_t>(),
         s.exp_avg_sq.data_as<std::uint16_t>(), copy, s.range.size(), s.decay ? 1 : 0});
  }
  device_blocks_ =
      kernels::cuda::adamw_plan(descriptors.data(), static_cast<std::int64_t>(descriptors.size()));
  device_slots_ =
      tensor::from_bytes(descriptors.data(), descriptors.size() * sizeof(descriptors[0]), where_);
#endif
}

void adamw::step(double lr, double grad_scale, std::int64_t step, const exec_context& context) {
  if (where_.is_cpu()) return this->step(lr, grad_scale, step, context.pool());
  if (context.where() != where_)
    fail("AdamW: the parameters are on {}, the step computes on {}", to_string(where_),
         to_string(context.where()));
  if (step < 1) fail("AdamW steps count from 1, got {}", step);
#if TROUPE_HAVE_CUDA
  if (bf16_copies::changes() != copies_seen_) upload_slots();
  // NOTES: only this optimizer's copies go stale (a rank with two chunks steps two optimizers:
  // the first's copies stay current through the second's step); written() marks those it writes.
  parameters_stepped(values_);
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
                            static_cast<std::int64_t>(slots_.size()), device_blocks_, hyper,
                            nullptr, context.stream());
  bf16_copies::written(copied_);
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
    float* p = s.p->value.data_as<float>() + s.range.begin;
    const float* g = s.p->grad.data_as<const float>() + s.range.begin;
    std::uint16_t* m = s.exp_avg.data_as<std::uint16_t>();
    std::uint16_t* v = s.exp_avg_sq.data_as<std::uint16_t>();
    const float decay = s.decay ? 1.0f - rate * static_cast<float>(settings_.weight_decay) : 1.0f;
    pool.parallel_for(s.range.size(), 4096, [&](std::int64_t begin, std::int64_t end) {
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
  for (const slot& s : slots_)
    for (auto [suffix, moment] :
         {std::pair{".exp_avg", &s.exp_avg}, {".exp_avg_sq", &s.exp_avg_sq}})
      out.emplace_back(
          s.sliced ? fmt::format("{}{}[{}:{}]", s.p->name, suffix, s.range.begin, s.range.end)
                   : s.p->name + suffix,
          *moment);
  return out;
}

namespace {

/// A moment's whole tensor or its piece "<name>[BEGIN:END]".
struct moment_piece {
  element_range range;
  const tensor* values;
  bool whole;
};
/// The pieces of each moment, by the moment's name.
using piece_index = std::map<std::string, std::vector<moment_piece>>;

/// The range "[BEGIN:END]" at the end of `name`, if it ends in one (digits only).
std::optional<element_range> range_suffix(const std::string& name) {
  const auto open = name.rfind('[');
  const auto colon = name.rfind(':');
  if (open == std::string::npos || colon == std::string::npos || colon < open || name.back() != ']')
    return std::nullopt;
  element_range r;
  const char* first = name.data() + open + 1;
  const char* middle = name.data() + colon;
  const char* last = name.data() + name.size() - 1;
  const auto a = std::from_chars(first, middle, r.begin);
  const auto b = std::from_chars(middle + 1, last, r.end);
  if (a.ec != std::errc() || a.ptr != middle || b.ec != std::errc() || b.ptr != last ||
      first == middle || middle + 1 == last)
    return std::nullopt;
  return r;
}

piece_index index_pieces(const std::vector<std::pair<std::string, tensor>>& tensors) {
  piece_index out;
  for (const auto& [name, t] : tensors) {
    const auto r = range_suffix(name);
    if (!r) {
      out[name].push_back({element_range{0, t.numel()}, &t, true});
      continue;
    }
    if (r->begin < 0 || r->size() != t.numel())
      fail("optimizer state: {} holds {} elements", name, t.numel());
    out[name.substr(0, name.rfind('['))].push_back({*r, &t, false});
  }
  return out;
}

}  // namespace

void adamw::load_state(const std::vector<std::pair<std::string, tensor>>& tensors) {
  const piece_index pieces = index_pieces(tensors);
  for (slot& s : slots_)
    for (auto [suffix, target] :
         {std::pair{".exp_avg", &s.exp_avg}, {".exp_avg_sq", &s.exp_avg_sq}}) {
      const std::string name = s.p->name + suffix;
      auto it = pieces.find(name);
      if (it == pieces.end()) fail("optimizer state: no {}", name);
      // A whole tensor wins over pieces; pieces must tile the slot's range exactly.
      std::vector<moment_piece> parts;
      for (const moment_piece& p : it->second)
        if (p.whole) parts = {p};
      if (parts.empty()) parts = it->second;
      std::sort(parts.begin(), parts.end(), [](const moment_piece& a, const moment_piece& b) {
        return a.range.begin < b.range.begin;
      });
      std::int64_t next = s.range.begin;  // the first element not yet filled
      for (const auto& [r, source, whole] : parts) {
        if (source->type() != dtype::bf16 || (whole && source->shape() != s.p->value.shape()) ||
            r.end > s.p->value.numel())
          fail("optimizer state: {}{} is {}, expected bf16 of the parameter's shape {}", name,
               whole ? std::string() : fmt::format("[{}:{}]", r.begin, r.end), source->describe(),
               s.p->value.describe());
        const std::int64_t begin = std::max(r.begin, s.range.begin);
        const std::int64_t end = std::min(r.end, s.range.end);
        if (end <= begin) continue;
        if (begin != next)
          fail("optimizer state: the pieces of {} {} elements [{}, {}) of the parameter", name,
               begin > next ? "leave out" : "hold twice", std::min(begin, next),
               std::max(begin, next));
        tensor from = source->reshape({source->numel()}).narrow(0, begin - r.begin, end - begin);
        tensor to =
            target->reshape({target->numel()}).narrow(0, begin - s.range.begin, end - begin);
        to.copy_from(from);
        next = end;
      }
      if (next != s.range.end)
        fail("optimizer state: the pieces of {} leave out elements [{}, {}) of the parameter", name,
             next, s.range.end);
    }
}

std::int64_t adamw::state_bytes() const {
  std::int64_t n = 0;
  for (const slot& s : slots_)
    n += static_cast<std::int64_t>(s.exp_avg.nbytes() + s.exp_avg_sq.nbytes());
  return n;
}

bool adamw::keeps_range(const std::string& name) const {
  for (const slot& s : slots_)
    if (s.p->name == name) return s.sliced;
  return false;
}

std::int64_t adamw::parameter_count() const {
  std::int64_t n = 0;
  for (const slot& s : slots_) n += s.p->value.numel();
  return n;
}

}  // namespace troupe
