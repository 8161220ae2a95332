#pragma once

// What every troupe plugin in this tree shares: error reporting through the C ABI, parallel
// loops on the host's worker pool and parameter declarations (split_backward.hpp keeps the
// per-micro-batch saved state). Plugins use the C ABI and kernels/ only, never libtroupe's C++ API.

#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "kernels/dispatch/device_ops.hpp"
#include "runtime/abi/troupe_plugin.h"

namespace troupe::plugin {

/// Writes a message into `error` and returns `status`.
template <class... Args>
troupe_status fail(troupe_error* error, troupe_status status, fmt::format_string<Args...> format,
                   Args&&... args) {
  const std::string message = fmt::format(format, std::forward<Args>(args)...);
  std::snprintf(error->message, sizeof(error->message), "%s", message.c_str());
  return status;
}

/// Runs `body` (which may throw) and turns an exception into an error status.
template <class F>
troupe_status guarded(troupe_error* error, F&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(error, TROUPE_STATUS_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "{}", e.what());
  }
}

/// Returns from the enclosing function when a call fails.
#define TROUPE_TRY(call)                                                   \
  do {                                                                     \
    const troupe_status troupe_try_status_ = (call);                       \
    if (troupe_try_status_ != TROUPE_STATUS_OK) return troupe_try_status_; \
  } while (false)

/// body(begin, end) over chunks of [0, count) on the context's worker pool.
using kernels::parallel_for;
using kernels::parallel_tasks;

/// "cpu" or "cuda:N", for messages.
inline std::string device_name(DLDevice device) {
  return device.device_type == kDLCUDA ? fmt::format("cuda:{}", device.device_id)
         : device.device_type == kDLCPU
             ? std::string("cpu")
             : fmt::format("device type {}", static_cast<int>(device.device_type));
}

inline float* data_of(const DLTensor& t) {
  return reinterpret_cast<float*>(static_cast<char*>(t.data) + t.byte_offset);
}

/// The parameters of an instance, in declaration order, with storage for their names.
class parameter_list {
 public:
  /// Declares a parameter; returns its index.
  std::size_t add(std::string name, std::vector<std::int64_t> shape, troupe_param_init init,
                  float scale, std::uint32_t flags = TROUPE_PARAM_TRAINABLE) {
    names_.push_back(std::make_unique<std::string>(std::move(name)));
    troupe_param_spec spec{};
    spec.name = names_.back()->c_str();
    spec.ndim = static_cast<std::int32_t>(shape.size());
    for (std::size_t i = 0; i < shape.size(); ++i) spec.shape[i] = shape[i];
    spec.dtype = {kDLFloat, 32, 1};
    spec.init = init;
    spec.init_scale = scale;
    spec.flags = flags;
    specs_.push_back(spec);
    return specs_.size() - 1;
  }

  const std::vector<troupe_param_spec>& specs() const { return specs_; }

  /// Checks bound tensors (check_bound) and takes their data pointers: weights[i] and grads_out[i]
  /// (null for a buffer without a gradient) for declaration i.
  troupe_status bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                     std::vector<float*>& weights, std::vector<float*>& grads_out,
                     troupe_error* error) const {
    TROUPE_TRY(check_bound(params, count, error));
    weights.assign(static_cast<std::size_t>(count), nullptr);
    grads_out.assign(static_cast<std::size_t>(count), nullptr);
    for (std::int32_t i = 0; i < count; ++i) {
      weights[static_cast<std::size_t>(i)] = data_of(params[i]);
      grads_out[static_cast<std::size_t>(i)] =
          grads[i].data != nullptr ? data_of(grads[i]) : nullptr;
    }
    return TROUPE_STATUS_OK;
  }

  /// Checks bound tensors against the declarations (count, f32, shape, contiguous).
  troupe_status check_bound(const DLTensor* params, std::int32_t count, troupe_error* error) const {
    if (count != static_cast<std::int32_t>(specs_.size()))
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "expected {} parameters, got {}",
                  specs_.size(), count);
    for (std::size_t i = 0; i < specs_.size(); ++i) {
      const DLTensor& t = params[i];
      bool ok = t.ndim == specs_[i].ndim && t.dtype.code == kDLFloat && t.dtype.bits == 32;
      for (std::int32_t d = 0; ok && d < t.ndim; ++d) ok = t.shape[d] == specs_[i].shape[d];
      if (ok && t.strides != nullptr) {
        std::int64_t expected = 1;
        for (std::int32_t d = t.ndim - 1; ok && d >= 0; --d) {
          ok = t.shape[d] == 1 || t.strides[d] == expected;
          expected *= t.shape[d];
        }
      }
      if (!ok)
        return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                    "parameter '{}' is bound to a tensor of the wrong shape or type",
                    specs_[i].name);
    }
    return TROUPE_STATUS_OK;
  }

 private:
  std::vector<std::unique_ptr<std::string>> names_;
  std::vector<troupe_param_spec> specs_;
};

/// [batch, length, width] f32 contiguous activations, as every layer kind takes them.
struct activation_shape {
  std::int64_t batch = 0, length = 0, width = 0;
  std::int64_t tokens() const { return batch * length; }
};

/// Checks that `t` is a contiguous f32 [batch, length, width] tensor on the context's device.
inline troupe_status check_activation(const DLTensor& t, std::int64_t width, const char* what,
                                      activation_shape& shape, troupe_error* error,
                                      const troupe_exec_context* context = nullptr) {
  const DLDevice expected = context != nullptr ? context->device : DLDevice{kDLCPU, 0};
  bool ok = t.ndim == 3 && t.dtype.code == kDLFloat && t.dtype.bits == 32 && t.shape[2] == width;
  if (ok && t.strides != nullptr)
    ok = t.strides[2] == 1 && t.strides[1] == width && t.strides[0] == t.shape[1] * width;
  if (!ok)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "{} must be a contiguous f32 tensor [batch, length, {}]", what, width);
  if (t.device.device_type != expected.device_type || t.device.device_id != expected.device_id)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "{} is on {}, but the call computes on {}",
                what, device_name(t.device), device_name(expected));
  shape = {t.shape[0], t.shape[1], width};
  return TROUPE_STATUS_OK;
}

}  // namespace troupe::plugin
