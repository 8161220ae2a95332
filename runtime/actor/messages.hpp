#pragma once

// Message types that cross processes. Each has an inspect() overload and is registered in
// message_types.cpp: CAF 0.17 sends an unregistered type to another process as an empty message
// without any compile-time error, so troupe::send refuses to send one (see send.hpp).

#include <cstdint>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/sec.hpp>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// A tensor in a message. Within a process the storage is shared, never copied. Between
/// processes CAF carries descriptors, not bulk data: a tensor message may carry at most
/// `inline_limit` bytes of host memory (router biases, expert counts, small control tensors).
/// Bigger tensors and CUDA tensors travel over the data plane (UCX, NCCL) and are referred to by
/// descriptor; troupe::send refuses to put them in a cross-process message.
struct tensor_message {
  static constexpr std::size_t inline_limit = 64 * 1024;
  tensor value;
};

/// Why `message` may not cross a process boundary, or "" when it may.
std::string remote_payload_problem(const tensor_message& message);

template <class Inspector>
typename std::enable_if<Inspector::reads_state, typename Inspector::result_type>::type inspect(
    Inspector& f, tensor_message& x) {
  if constexpr (std::is_void_v<typename Inspector::result_type>) {
    // Printing (to_string, logs): the description, not the bytes.
    std::string description = x.value.describe();
    f(caf::meta::type_name("troupe.tensor_message"), description);
    return;
  } else {
    // Saving: dtype, shape and the bytes of a contiguous host copy.
    if (!remote_payload_problem(x).empty()) return caf::sec::invalid_argument;
    std::uint8_t type = x.value.defined() ? static_cast<std::uint8_t>(x.value.type()) + 1 : 0;
    std::vector<std::int64_t> shape =
        x.value.defined() ? x.value.shape() : std::vector<std::int64_t>{};
    std::vector<char> bytes;
    if (x.value.defined()) {
      const tensor host = x.value.is_contiguous() ? x.value : x.value.clone();
      bytes.assign(static_cast<const char*>(host.data()),
                   static_cast<const char*>(host.data()) + host.nbytes());
    }
    return f(caf::meta::type_name("troupe.tensor_message"), type, shape, bytes);
  }
}

template <class Inspector>
typename std::enable_if<Inspector::writes_state, typename Inspector::result_type>::type inspect(
    Inspector& f, tensor_message& x) {
  std::uint8_t type = 0;
  std::vector<std::int64_t> shape;
  std::vector<char> bytes;
  auto result = f(caf::meta::type_name("troupe.tensor_message"), type, shape, bytes);
  if (result) return result;
  if (type == 0) {
    x.value = tensor();
    return result;
  }
  if (type > static_cast<std::uint8_t>(dtype::u8) + 1) return caf::sec::invalid_argument;
  tensor t = tensor::empty(static_cast<dtype>(type - 1), shape);
  if (t.nbytes() != bytes.size()) return caf::sec::invalid_argument;
  std::copy(bytes.begin(), bytes.end(), static_cast<char*>(t.data()));
  x.value = std::move(t);
  return result;
}

}  // namespace troupe
