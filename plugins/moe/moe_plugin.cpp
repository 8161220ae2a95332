// libtroupe-moe.so: DeepSeekMoE as a troupe moe plugin.
//   inputs:       x [batch, length, hidden] (the post_attention_layernorm output)
//   outputs:      y [batch, length, hidden], counts [n_routed_experts] i64 (routed (token, slot)
//                 pairs per expert, for the balancer), balance_loss [1] f32 (sequence-wise, alpha
//                 applied)
//   output grads: dy, (counts: ignored, may be empty), d_balance_loss [1] (optional; 0 if absent)
//   options:      {"balance_loss_alpha": 1e-4}
#include <nlohmann/json.hpp>

#include "plugins/moe/moe_layer.hpp"

namespace {

using namespace troupe::plugin;

moe_layer* layer_of(troupe_instance* instance) {
  return reinterpret_cast<moe_layer*>(instance);
}

troupe_status init(const troupe_host*, troupe_error*) {
  return TROUPE_STATUS_OK;
}

troupe_status create(const troupe_instance_config* config, troupe_instance** out,
                     troupe_error* error) {
  return guarded(error, [&] {
    if (config->device.device_type != kDLCPU)
      return fail(error, TROUPE_STATUS_UNSUPPORTED,
                  "the moe plugin runs on the CPU; no CUDA implementation yet");
    const auto model = troupe::parse_model_config(nlohmann::json::parse(config->model_config_json),
                                                  "model config");
    if (model.n_routed_experts == 0)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "the model has no routed experts (n_routed_experts = 0)");
    const auto options = nlohmann::json::parse(config->options_json);
    const double alpha = options.value("balance_loss_alpha", 1e-4);
    if (!(alpha >= 0.0))
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "balance_loss_alpha must be >= 0");
    *out = reinterpret_cast<troupe_instance*>(new moe_layer(model, alpha));
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
  if (num_inputs != 1) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "moe takes one input, x");
  TROUPE_TRY(
      check_activation(inputs[0], layer_of(instance)->hidden(), "the MoE input", shape, error));
  if (*num_outputs < 3)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "room for three outputs needed");
  outputs[0] =
      troupe_tensor_spec{3, {shape.batch, shape.length, shape.width, 0}, {kDLFloat, 32, 1}};
  outputs[1] = troupe_tensor_spec{1, {layer_of(instance)->experts(), 0, 0, 0}, {kDLInt, 64, 1}};
  outputs[2] = troupe_tensor_spec{1, {1, 0, 0, 0}, {kDLFloat, 32, 1}};
  *num_outputs = 3;
  return TROUPE_STATUS_OK;
}

troupe_status forward(troupe_instance* instance, const troupe_exec_context* context,
                      std::int64_t micro_batch, const DLTensor* inputs, std::int32_t num_inputs,
                      DLTensor* outputs, std::int32_t num_outputs, troupe_error* error) {
  if (num_inputs != 1 || num_outputs != 3)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "moe maps x to (y, counts, balance_loss)");
  return layer_of(instance)->forward(context, micro_batch, inputs[0], outputs[0], outputs[1],
                                     outputs[2], error);
}

troupe_status backward(troupe_instance* instance, const troupe_exec_context* context,
                       std::int64_t micro_batch, troupe_backward_part part,
                       const DLTensor* output_grads, std::int32_t num_output_grads,
                       DLTensor* input_grads, std::int32_t num_input_grads, troupe_error* error) {
  float d_balance = 0.0f;
  if (num_output_grads >= 3 && output_grads[2].data != nullptr)
    d_balance = *static_cast<const float*>(output_grads[2].data);
  const bool has_grads = num_output_grads >= 1 && num_input_grads >= 1;
  return layer_of(instance)->backward(context, micro_batch, part,
                                      has_grads ? &output_grads[0] : nullptr, d_balance,
                                      has_grads ? &input_grads[0] : nullptr, error);
}

void forget(troupe_instance* instance, std::int64_t micro_batch) {
  layer_of(instance)->forget(micro_batch);
}

troupe_status export_state(troupe_instance*, troupe_blob* state, troupe_error*) {
  *state = troupe_blob{nullptr, 0, nullptr};  // routing state (the bias) is a runtime-owned buffer
  return TROUPE_STATUS_OK;
}

troupe_status import_state(troupe_instance*, const void*, std::size_t size, troupe_error* error) {
  if (size != 0)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "moe has no state; got {} bytes", size);
  return TROUPE_STATUS_OK;
}

const char* statistics(troupe_instance* instance) {
  return layer_of(instance)->statistics().c_str();
}

const troupe_plugin table = {
    TROUPE_PLUGIN_ABI_MAJOR,
    TROUPE_PLUGIN_ABI_MINOR,
    sizeof(troupe_plugin),
    TROUPE_PLUGIN_KIND_MOE,
    "moe",
    "1.0.0",
    "DeepSeekMoE: shared + fine-grained routed SwiGLU experts, aux-loss-free group-limited routing "
    "(CPU)",
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
