// libFuzzer target: a safetensors file, header and data, as troupe maps and validates it before
// any tensor is read (runtime/checkpoint/safetensors.cpp). Anything but troupe::error is a bug.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/checkpoint/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // NOTES: the reader maps a path; an anonymous memory file gives it one without the disk.
  static const int fd = ::memfd_create("fuzz.safetensors", 0);
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size))
    return 0;
  try {
    const auto file = troupe::safetensors_file::open("/proc/self/fd/" + std::to_string(fd));
    for (const auto& entry : file.entries()) (void)file.find(entry.name);
  } catch (const troupe::error&) {
  }
  return 0;
}
