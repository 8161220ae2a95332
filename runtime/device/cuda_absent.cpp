// The CUDA interface in a build without nvcc: CUDA memory cannot be allocated, and saying so
// precisely is the whole job.
#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"

namespace troupe::cuda {

namespace {
constexpr const char* reason =
    "troupe was built without CUDA (nvcc was not found or -Dcuda=disabled); rebuild with "
    "-Dcuda=enabled on a machine with the CUDA toolkit";
}

bool built_with_cuda() {
  return false;
}
int device_count() {
  return 0;
}
std::string unavailable_reason() {
  return reason;
}
void* allocate(std::size_t, int) {
  throw error(reason);
}
void release(void*, int) noexcept {}
void copy(void*, const void*, std::size_t, copy_kind, int) {
  throw error(reason);
}
void use_device(int) {
  throw error(reason);
}
void synchronize(int) {
  throw error(reason);
}

}  // namespace troupe::cuda
