// libtroupe-fp8.so: the GEMM provider every linear layer calls when a topology sets
// model.precision = "fp8": DeepSeek-V3's fine-grained FP8 recipe (fp8_gemm.hpp).
#include <string>

#include "plugins/common/plugin_support.hpp"
#include "plugins/fp8/fp8_gemm.hpp"
#include "plugins/fp8/fp8_gemm_cuda.hpp"

namespace {

using namespace troupe::plugin;

struct fp8_instance {
  troupe_gemm_provider provider{};
};

troupe_status gemm(void*, const troupe_exec_context* context, const troupe_gemm_call* call,
                   troupe_error* error) {
  if (context != nullptr && context->device.device_type == kDLCUDA)
    return fp8_gemm_cuda(context, *call, error);
  return fp8_gemm(context, *call, error);
}

troupe_status init(const troupe_host*, troupe_error*) {
  return TROUPE_STATUS_OK;
}

troupe_status create(const troupe_instance_config* config, troupe_instance** out,
                     troupe_error* error) {
  if (config->device.device_type == kDLCUDA && !fp8_cuda_built())
    return fail(error, TROUPE_STATUS_UNSUPPORTED,
                "this fp8 plugin was built without CUDA: it cannot serve cuda:{}",
                config->device.device_id);
  if (config->device.device_type != kDLCPU && config->device.device_type != kDLCUDA)
    return fail(error, TROUPE_STATUS_UNSUPPORTED, "the fp8 provider runs on the CPU or CUDA");
  auto* instance = new fp8_instance();
  instance->provider = troupe_gemm_provider{instance, "fp8-e4m3-tile128", &gemm};
  *out = reinterpret_cast<troupe_instance*>(instance);
  return TROUPE_STATUS_OK;
}

void destroy(troupe_instance* instance) {
  delete reinterpret_cast<fp8_instance*>(instance);
}

const troupe_gemm_provider* provider(troupe_instance* instance) {
  return &reinterpret_cast<fp8_instance*>(instance)->provider;
}

const troupe_plugin table = {
    TROUPE_PLUGIN_ABI_MAJOR,
    TROUPE_PLUGIN_ABI_MINOR,
    sizeof(troupe_plugin),
    TROUPE_PLUGIN_KIND_GEMM,
    "fp8",
    "1.0.0",
    "DeepSeek-V3 fine-grained FP8 GEMM (E4M3, 1x128 tiles, 128x128 weight blocks): cuBLASLt's "
    "block-scaled FP8 on CUDA, exact emulation on the CPU",
    &init,
    &create,
    &destroy,
    nullptr,  // parameters
    nullptr,  // bind
    nullptr,  // infer_outputs
    nullptr,  // forward
    nullptr,  // backward
    nullptr,  // forget
    nullptr,  // export_state
    nullptr,  // import_state
    &provider,
    nullptr,  // statistics
    nullptr,  // forward_cached
};

}  // namespace

extern "C" TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  return &table;
}
