#pragma once

#include <string>
#include <string_view>

#include <dlpack/dlpack.h>

namespace troupe {

/// Where a tensor's memory lives: host memory or one CUDA device.
struct device {
  enum class kind : int { cpu, cuda };

  kind type = kind::cpu;
  int index = 0;  ///< the CUDA ordinal; always 0 for cpu

  static constexpr device cpu() { return {kind::cpu, 0}; }
  static constexpr device cuda(int ordinal) { return {kind::cuda, ordinal}; }

  bool is_cpu() const { return type == kind::cpu; }
  bool is_cuda() const { return type == kind::cuda; }
  friend bool operator==(const device&, const device&) = default;
};

/// "cpu" or "cuda:N".
std::string to_string(device where);

/// Parses "cpu", "cuda" (= cuda:0) or "cuda:N". Throws troupe::error naming the text and the
/// accepted forms.
device parse_device(std::string_view text);

DLDevice to_dlpack(device where);

/// Throws troupe::error for DLPack device types troupe does not hold (only CPU and CUDA memory).
device from_dlpack(DLDevice where);

}  // namespace troupe
