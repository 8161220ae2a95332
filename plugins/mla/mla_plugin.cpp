// libtroupe-mla.so: DeepSeek-V3's Multi-head Latent Attention as a troupe attention plugin.
//   inputs:  x [batch, length, hidden] (the input_layernorm output)
//   outputs: y [batch, length, hidden]
//   options: {"path": "naive" | "absorbed"} (default naive; absorbed is forward-only)
//   forward_cached (ABI 1.2): inference over the paged latent cache (plugins/mla/mla_cached.cpp)
#include <memory>
#include <string>

#include "plugins/common/layer_entry.hpp"
#include "plugins/mla/mla_layer.hpp"

namespace {

using namespace troupe::plugin;
using entry = layer_entry<mla_layer>;

troupe_status create(const troupe_instance_config* config, troupe_instance** out,
                     troupe_error* error) {
  return guarded(error, [&] {
    model_shape model;
    TROUPE_TRY(cpu_model_shape(config, "mla", model, error));
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

troupe_status infer_outputs(troupe_instance* instance, const DLTensor* inputs,
                            std::int32_t num_inputs, troupe_tensor_spec* outputs,
                            std::int32_t* num_outputs, troupe_error* error) {
  activation_shape shape;
  if (num_inputs != 1) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "mla takes one input, x");
  troupe_exec_context where{};  // the input may be on any device the layer computes on
  where.device = inputs[0].device;
  TROUPE_TRY(check_activation(inputs[0], entry::of(instance)->hidden(), "the attention input",
                              shape, error, &where));
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
  return guarded(error, [&] {
    return entry::of(instance)->forward(context, micro_batch, inputs[0], outputs[0], error);
  });
}

troupe_status backward(troupe_instance* instance, const troupe_exec_context* context,
                       std::int64_t micro_batch, troupe_backward_part part,
                       const DLTensor* output_grads, std::int32_t num_output_grads,
                       DLTensor* input_grads, std::int32_t num_input_grads, troupe_error* error) {
  const bool has_grads = num_output_grads >= 1 && num_input_grads >= 1;
  return guarded(error, [&] {
    return entry::of(instance)->backward(context, micro_batch, part,
                                         has_grads ? &output_grads[0] : nullptr,
                                         has_grads ? &input_grads[0] : nullptr, error);
  });
}

troupe_status forward_cached(troupe_instance* instance, const troupe_exec_context* context,
                             const troupe_kv_cache* cache, const DLTensor* x, DLTensor* y,
                             troupe_error* error) {
  if (cache == nullptr || x == nullptr || y == nullptr)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward_cached needs a cache, x and y");
  return guarded(
      error, [&] { return entry::of(instance)->forward_cached(context, *cache, *x, *y, error); });
}

constexpr troupe_plugin table = entry::table(
    {TROUPE_PLUGIN_KIND_ATTENTION, "mla", "1.0.0",
     "DeepSeek-V3 Multi-head Latent Attention (CPU and CUDA; naive and absorbed (CPU) paths, YaRN, "
     "recomputing backward; paged latent-cache inference on the CPU)"},
    &create, &infer_outputs, &forward, &backward, &forward_cached);

}  // namespace

extern "C" TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  return &table;
}
