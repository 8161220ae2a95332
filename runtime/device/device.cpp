#include "runtime/device/device.hpp"

#include <charconv>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"

namespace troupe {

std::string to_string(device where) {
  return where.is_cpu() ? std::string("cpu") : fmt::format("cuda:{}", where.index);
}

device parse_device(std::string_view text) {
  if (text == "cpu") return device::cpu();
  if (text == "cuda") return device::cuda(0);
  if (text.starts_with("cuda:")) {
    std::string_view digits = text.substr(5);
    int ordinal = -1;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), ordinal);
    if (ec == std::errc{} && end == digits.data() + digits.size() && ordinal >= 0 &&
        !digits.empty())
      return device::cuda(ordinal);
  }
  fail("'{}' is not a device: use \"cpu\", \"cuda\" or \"cuda:N\" with N >= 0", text);
}

DLDevice to_dlpack(device where) {
  return where.is_cpu() ? DLDevice{kDLCPU, 0} : DLDevice{kDLCUDA, where.index};
}

device from_dlpack(DLDevice where) {
  switch (where.device_type) {
    case kDLCPU:
      return device::cpu();
    case kDLCUDA:
      return device::cuda(where.device_id);
    default:
      fail("DLPack device type {} is not supported: troupe holds CPU and CUDA memory",
           static_cast<int>(where.device_type));
  }
}

}  // namespace troupe

namespace troupe::cuda {

std::string format_bytes(std::size_t bytes) {
  constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, units[unit]);
}

std::string describe(const gpu_info& gpu) {
  return fmt::format("cuda:{} {}, {} ({} free), sm_{}{}, {} SMs", gpu.ordinal, gpu.name,
                     format_bytes(gpu.total_bytes), format_bytes(gpu.free_bytes), gpu.major,
                     gpu.minor, gpu.multiprocessors);
}

}  // namespace troupe::cuda
