// libtroupe-mla.so: DeepSeek-V3's Multi-head Latent Attention as a troupe attention plugin.
//   inputs:  x [batch, length, hidden] (the input_layernorm output)
//   outputs: y [batch, length, hidden]
//   options: {"path": "naive" | "absorbed"} (default naive; absorbed is forward-only)
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "plugins/mla/mla_layer.hpp"

namespace {

using namespace troupe::plugin;

mla_layer* layer_of(troupe_instance* instance) {
  return reinterpret_cast<mla_layer*>(instance);
}

troupe_status init(const troupe_host*, troupe_error*) {
  return TROUPE_STATUS_OK;
}

troupe_status create(const troupe_instance_config* config, troupe_instance** out,
                     troupe_error* error) {
  return guarded(error, [&] {
    if (config->device.device_type != kDLCPU)
      return fail(error, TROUPE_STATUS_UNSUPPORTED,
                  "the mla plugin runs on the CPU; no CUDA implementation yet");
    const auto model = troupe::parse_model_config(nlohmann::json::parse(config->model_config_json),
                                                  "model config");
    const auto options = nlohmann::json::parse(config->options_json);
    const std::string path = options.value("path", std::string("naive"));
    if (path != "naive" && path != "absorbed")
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "option path = \"{}\": use \"naive\" or \"absorbed\"", path);
    *out = reinterpret_cast<troupe_instance*>(
        new mla_layer(model, path == "naive" ? mla_path::naive : mla_path::absorbed));
    return TROUPE_STATUS_OK;
  });
}

void destroy(troupe_instance* instance) {
  delete layer_of(instance);
}

troupe_status parameters(troupe_instance* instance, const troupe_param_spec** specs,
                         std::int32_t* count, troupe_error*) {
  *specs = layer_of(instance)->parameters().specs().data();
  *count = static_cast<std::int32_t>(layer_of(instance)->parameters().specs().size());
  return TROUPE_STATUS_OK;
}

troupe_status bind(troupe_instance* instance, const DLTensor* params, const DLTensor* grads,
                   std::int32_t count, troupe_error* error) {
  return layer_of(instance)->bind(params, grads, count, error);
}

troupe_status infer_outputs(troupe_instance* instance, const DLTensor* inputs,
                            std::int32_t num_inputs, troupe_tensor_spec* outputs,
                            std::int32_t* num_outputs, troupe_error* error) {
  activation_shape shape;
  if (num_inputs != 1) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "mla takes one input, x");
  TROUPE_TRY(check_activation(inputs[0], layer_of(instance)->hidden(), "the attention input", shape,
                              error));
  if (*num_outputs < 1)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "room for one output needed");
  outputs[0] =
      troupe_tensor_spec{3, {shape.batch, shape.length, shape.width, 0}, {kDLFloat, 32, 1}};
  *num_outputs = 1;
  return TROUPE_STATUS_OK;
}

troupe_status forward(troupe_instance* instance, const troupe_exec_context* context,
                      std::int64_t micro_batch, const DLTensor* inputs, std::int32_t num_inputs,
                      DLTensor* outputs, std::int32_t num_outputs, troupe_error* error) {
  if (num_inputs != 1 || num_outputs != 1)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "mla maps one input to one output");
  return layer_of(instance)->forward(context, micro_batch, inputs[0], outputs[0], error);
}

troupe_status backward(troupe_instance* instance, const troupe_exec_context* context,
                       std::int64_t micro_batch, troupe_backward_part part,
                       const DLTensor* output_grads, std::int32_t num_output_grads,
                       DLTensor* input_grads, std::int32_t num_input_grads, troupe_error* error) {
  const bool has_grads = num_output_grads >= 1 && num_input_grads >= 1;
  return layer_of(instance)->backward(context, micro_batch, part,
                                      has_grads ? &output_grads[0] : nullptr,
                                      has_grads ? &input_grads[0] : nullptr, error);
}

void forget(troupe_instance* instance, std::int64_t micro_batch) {
  layer_of(instance)->forget(micro_batch);
}

// MLA keeps no state of its own between steps: parameters live with the runtime.
troupe_status export_state(troupe_instance*, troupe_blob* state, troupe_error*) {
  *state = troupe_blob{nullptr, 0, nullptr};
  return TROUPE_STATUS_OK;
}

troupe_status import_state(troupe_instance*, const void*, std::size_t size, troupe_error* error) {
  if (size != 0)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "mla has no state; got {} bytes", size);
  return TROUPE_STATUS_OK;
}

const char* statistics(troupe_instance* instance) {
  return layer_of(instance)->statistics().c_str();
}

const troupe_plugin table = {
    TROUPE_PLUGIN_ABI_MAJOR,
    TROUPE_PLUGIN_ABI_MINOR,
    sizeof(troupe_plugin),
    TROUPE_PLUGIN_KIND_ATTENTION,
    "mla",
    "1.0.0",
    "DeepSeek-V3 Multi-head Latent Attention (CPU; naive and absorbed paths, YaRN, recomputing "
    "backward)",
    &init,
    &create,
    &destroy,
    &parameters,
    &bind,
    &infer_outputs,
    &forward,
    &backward,
    &forget,
    &export_state,
    &import_state,
    nullptr,  // gemm_provider
    &statistics,
};

}  // namespace

extern "C" TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  return &table;
}
