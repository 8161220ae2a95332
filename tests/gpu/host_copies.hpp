#pragma once

// Host vectors to cuda:0 and back, for the kernels' own tests.

#include <cstring>
#include <vector>

#include "runtime/device/cuda.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe::testing {

/// `values` as a 1-D tensor of `type` on cuda:0.
template <class T>
tensor upload(const std::vector<T>& values, dtype type) {
  tensor host = tensor::empty(type, {static_cast<std::int64_t>(values.size())});
  std::memcpy(host.data(), values.data(), values.size() * sizeof(T));
  return host.to(device::cuda(0));
}

/// `t`'s elements once the GPU is done with it.
template <class T>
std::vector<T> download(const tensor& t) {
  cuda::synchronize(t.where().index);
  tensor host = t.to(device::cpu());
  std::vector<T> out(static_cast<std::size_t>(t.numel()));
  std::memcpy(out.data(), host.data(), out.size() * sizeof(T));
  return out;
}

}  // namespace troupe::testing
