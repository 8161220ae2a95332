// The fp8 provider in a build without CUDA: its GPU path says so.
#include "plugins/common/plugin_support.hpp"
#include "plugins/fp8/fp8_gemm_cuda.hpp"

namespace troupe::plugin {

bool fp8_cuda_built() {
  return false;
}

troupe_status fp8_gemm_cuda(const troupe_exec_context*, const troupe_gemm_call&,
                            troupe_error* error) {
  return fail(error, TROUPE_STATUS_UNSUPPORTED,
              "this fp8 plugin was built without CUDA: its GEMM runs on the CPU only");
}

void fp8_forget_stream(void*) {}

}  // namespace troupe::plugin
