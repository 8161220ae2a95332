#include "kernels/cuda/cublaslt_api.hpp"

#include <dlfcn.h>

#include "kernels/cuda/check.cuh"

#include <fmt/format.h>

namespace troupe::kernels::cuda {

namespace {

constexpr const char* library = "libcublasLt.so.13";

template <class F>
void resolve(void* handle, F& slot, const char* name) {
  slot = reinterpret_cast<F>(dlsym(handle, name));
  if (slot == nullptr) fail_kernel(fmt::format("{}: no symbol {}: {}", library, name, dlerror()));
}

cublaslt_api load() {
  void* handle = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr)
    fail_kernel(fmt::format(
        "cannot load cuBLASLt ({}) for GPU GEMMs: {}; put the CUDA 13 libraries (the toolkit's "
        "lib64, or the nvidia-cublas wheel's lib folder) on LD_LIBRARY_PATH",
        library, dlerror()));
  cublaslt_api api{};
  resolve(handle, api.create, "cublasLtCreate");
  resolve(handle, api.destroy, "cublasLtDestroy");
  resolve(handle, api.status_name, "cublasLtGetStatusName");
  resolve(handle, api.status_string, "cublasLtGetStatusString");
  resolve(handle, api.matmul, "cublasLtMatmul");
  resolve(handle, api.heuristic, "cublasLtMatmulAlgoGetHeuristic");
  resolve(handle, api.desc_create, "cublasLtMatmulDescCreate");
  resolve(handle, api.desc_destroy, "cublasLtMatmulDescDestroy");
  resolve(handle, api.desc_set, "cublasLtMatmulDescSetAttribute");
  resolve(handle, api.preference_create, "cublasLtMatmulPreferenceCreate");
  resolve(handle, api.preference_destroy, "cublasLtMatmulPreferenceDestroy");
  resolve(handle, api.preference_set, "cublasLtMatmulPreferenceSetAttribute");
  resolve(handle, api.layout_create, "cublasLtMatrixLayoutCreate");
  resolve(handle, api.layout_destroy, "cublasLtMatrixLayoutDestroy");
  return api;  // the library stays loaded until the process ends
}

}  // namespace

const cublaslt_api& cublaslt() {
  static const cublaslt_api api = load();
  return api;
}

}  // namespace troupe::kernels::cuda
