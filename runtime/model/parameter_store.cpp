#include "runtime/model/parameter_store.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/ranges.h>

#include "kernels/cpu/counter_random.hpp"
#include "kernels/cpu/random_fill.hpp"
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/device/stream.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/elementwise.hpp"
#endif

namespace troupe {

parameter& parameter_store::add(const std::string& name, const parameter_spec& spec) {
  auto [it, inserted] = parameters_.try_emplace(name);
  if (!inserted) fail("parameter '{}' is declared twice", name);
  parameter& p = it->second;
  p.name = name;
  p.spec = spec;
  p.value = tensor::zeros(dtype::f32, spec.shape, where_);
  if (!spec.buffer()) p.grad = tensor::zeros(dtype::f32, spec.shape, where_);
  order_.push_back(&p);
  parameters_changed();  // new memory, perhaps where a freed parameter was
  return p;
}

parameter* parameter_store::find(const std::string& name) {
  auto it = parameters_.find(name);
  return it == parameters_.end() ? nullptr : &it->second;
}

const parameter* parameter_store::find(const std::string& name) const {
  auto it = parameters_.find(name);
  return it == parameters_.end() ? nullptr : &it->second;
}

parameter& parameter_store::at(const std::string& name) {
  parameter* p = find(name);
  if (p == nullptr) fail("no parameter named '{}'", name);
  return *p;
}

std::int64_t parameter_store::element_count() const {
  std::int64_t count = 0;
  for (const parameter* p : order_) count += p->value.numel();
  return count;
}

namespace {

/// FNV-1a: a stable hash of a parameter name.
std::uint64_t name_hash(const std::string& name) {
  std::uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : name) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

}  // namespace

void parameter_store::initialize(std::uint64_t seed, thread_pool* pool) {
  parameters_changed();
  for (parameter* p : order_) {
    tensor host = where_.is_cpu() ? p->value : tensor::empty(dtype::f32, p->value.shape());
    float* data = host.data_as<float>();
    const std::int64_t n = host.numel();
    const counter_random random(seed ^ name_hash(p->name));
    const float scale = p->spec.init_scale;
    const troupe_param_init kind = p->spec.init;
    // Chunks of pairs, so each normal pair is drawn once.
    const auto fill = [&](std::int64_t pair_begin, std::int64_t pair_end) {
      const std::int64_t begin = 2 * pair_begin, end = std::min(2 * pair_end, n);
      switch (kind) {
        case TROUPE_INIT_ZEROS:
          std::fill(data + begin, data + end, 0.0f);
          break;
        case TROUPE_INIT_ONES:
          std::fill(data + begin, data + end, 1.0f);
          break;
        case TROUPE_INIT_NORMAL:
          kernels::cpu::fill_normal_pairs(random, pair_begin, pair_end, scale, data, n);
          break;
        case TROUPE_INIT_UNIFORM:
          for (std::int64_t i = begin; i < end; ++i)
            data[i] = random.uniform(static_cast<std::uint64_t>(i), scale);
          break;
      }
    };
    const std::int64_t pairs = (n + 1) / 2;
    if (pool != nullptr)
      pool->parallel_for(pairs, std::int64_t{1} << 14, fill);
    else
      fill(0, pairs);
    if (!where_.is_cpu()) p->value.copy_from(host);
  }
}

void parameter_store::zero_grads(thread_pool* pool, bool leave_overwritten) {
  // NOTES: pieces of at most 1 MiB: on a GPU one block each (a block alone on the 134 MB of an
  // embedding's gradient would take milliseconds; the table is rebuilt when a gradient moved, a
  // hot swap), on the host shared among the pool's threads.
  constexpr std::uint64_t piece = std::uint64_t{1} << 20;
  std::vector<std::pair<void*, std::uint64_t>> spans;
  for (parameter* p : order_) {
    if (!p->grad.defined() || (leave_overwritten && p->spec.grad_overwritten())) continue;
    auto* bytes = static_cast<unsigned char*>(p->grad.data());
    for (std::uint64_t at = 0; at < p->grad.nbytes(); at += piece)
      spans.emplace_back(bytes + at, std::min<std::uint64_t>(piece, p->grad.nbytes() - at));
  }
  if (where_.is_cpu()) {
    const auto zero = [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i)
        std::memset(spans[static_cast<std::size_t>(i)].first, 0,
                    spans[static_cast<std::size_t>(i)].second);
    };
    const auto count = static_cast<std::int64_t>(spans.size());
    if (pool != nullptr)
      pool->parallel_for(count, 8, zero);
    else
      zero(0, count);
    return;
  }
  void* stream = cuda::current_stream(where_.index);
#if TROUPE_HAVE_CUDA
  static_assert(sizeof(kernels::cuda::zero_span) == sizeof(spans[0]));
  if (spans != grad_spans_) {
    grad_span_table_ = tensor::from_bytes(spans.data(), spans.size() * sizeof(spans[0]), where_);
    grad_spans_ = spans;
  }
  cuda::use_device(where_.index);
  kernels::cuda::zero_spans(static_cast<const kernels::cuda::zero_span*>(grad_span_table_.data()),
                            static_cast<std::int64_t>(spans.size()), stream);
#else
  for (const auto& [data, bytes] : spans) cuda::zero_async(data, bytes, stream, where_.index);
#endif
  cuda::synchronize_stream(stream, where_.index);
}

std::vector<std::pair<std::string, tensor>> parameter_store::named_values() const {
  std::vector<std::pair<std::string, tensor>> out;
  for (const parameter* p : order_) out.emplace_back(p->name, p->value);
  return out;
}

std::pair<std::vector<tensor>, std::vector<tensor>> bound_tensors(
    parameter_store& store, const std::vector<std::string>& names) {
  std::vector<tensor> values, grads;
  for (const auto& name : names) {
    parameter& p = store.at(name);
    values.push_back(p.value);
    grads.push_back(p.grad);
  }
  return {values, grads};
}

}  // namespace troupe
