// libtroupe-moe.so: DeepSeekMoE as a troupe moe plugin. The option "part" picks what an
// instance computes:
//
// "whole" (default): the layer with every routed expert.
//   inputs:       x [batch, length, hidden] (the post_attention_layernorm output)
//   outputs:      y [batch, length, hidden], counts [n_routed_experts] i64 (routed (token, slot)
//                 pairs per expert, for the balancer), balance_loss [1] f32 (sequence-wise, alpha
//                 applied)
//   output grads: dy, (counts: ignored, may be empty), d_balance_loss [1] (optional; 0 if absent)
//
// "routing": the router and the shared experts of a layer whose routed experts live on expert
// shards (expert parallelism).
//   outputs:      y_shared, counts, balance_loss, selected [batch, length, top_k] i32,
//                 gates [batch, length, top_k] f32
//   output grads: dy, (counts), d_balance_loss, (selected), d_gates [batch, length, top_k]
//
// "experts": the routed experts "experts": [ids] of a layer, on an expert shard.
//   inputs:       rows [1, R, hidden] grouped by expert, row_counts [len(ids)] i64
//   outputs:      y_rows [1, R, hidden]
//   output grads: dy_rows;  input grads: dx_rows
//
// Options: {"part": ..., "experts": [...], "balance_loss_alpha": 1e-4, "node_of_expert": [host
// of each routed expert], "max_nodes_per_token": M} (the last two: node-limited routing,
// moe_router.hpp).
//
// State (export_state/import_state, carried over by a hot swap): the instance's lifetime
// counters, as JSON {"format": "troupe-moe-state/1", "forward_calls": N, "tokens_routed": [per
// routed expert; empty for expert groups]}; statistics() reports them.
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "plugins/common/layer_entry.hpp"
#include "plugins/moe/expert_group.hpp"
#include "plugins/moe/moe_layer.hpp"

namespace {

using namespace troupe::plugin;

/// An instance: a whole or routing-only layer, or an expert group.
struct moe_instance {
  std::unique_ptr<moe_layer> layer;
  std::unique_ptr<expert_group> experts;

  const parameter_list& parameters() const {
    return layer ? layer->parameters() : experts->parameters();
  }
  troupe_status bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                     troupe_error* error) {
    return layer ? layer->bind(params, grads, count, error)
                 : experts->bind(params, grads, count, error);
  }
  void forget(std::int64_t micro_batch) {
    if (layer)
      layer->forget(micro_batch);
    else
      experts->forget(micro_batch);
  }
  // Lifetime counters, carried across hot swaps.
  std::int64_t forward_calls = 0;
  std::vector<std::int64_t> tokens_routed;  // per routed expert (layers only)
  std::string statistics_text;

  void count_forward(const troupe_exec_context* context, const DLTensor* counts) {
    ++forward_calls;
    if (counts == nullptr) return;
    // NOTES: on a GPU this waits for the layer's forward to copy E counts back; the runtime
    // reads them for the balancer after the step anyway.
    std::vector<std::int64_t> c(static_cast<std::size_t>(counts->shape[0]));
    ops::copy_to_host(context, c.data(), counts->data, c.size() * sizeof(std::int64_t));
    tokens_routed.resize(c.size(), 0);
    for (std::size_t e = 0; e < tokens_routed.size(); ++e) tokens_routed[e] += c[e];
  }

  const std::string& statistics() {
    auto stats = nlohmann::json::parse(layer ? layer->statistics() : experts->statistics());
    stats["forward_calls"] = forward_calls;
    stats["tokens_routed"] = tokens_routed;
    statistics_text = stats.dump();
    return statistics_text;
  }

  std::string export_state() const {
    return nlohmann::json{{"format", "troupe-moe-state/1"},
                          {"forward_calls", forward_calls},
                          {"tokens_routed", tokens_routed}}
        .dump();
  }

  troupe_status import_state(std::string_view bytes, troupe_error* error) {
    if (bytes.empty()) return TROUPE_STATUS_OK;  // from a plugin that keeps no state
    const auto state = nlohmann::json::parse(bytes, nullptr, false);
    if (state.is_discarded() || !state.is_object() ||
        state.value("format", std::string()) != "troupe-moe-state/1")
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "the state is not troupe-moe-state/1 JSON ({} bytes)", bytes.size());
    auto routed = state.value("tokens_routed", std::vector<std::int64_t>());
    const std::size_t experts_here = layer ? static_cast<std::size_t>(layer->experts()) : 0;
    if (!routed.empty() && routed.size() != experts_here)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "the state counts {} routed experts; this instance has {}", routed.size(),
                  experts_here);
    forward_calls = state.value("forward_calls", std::int64_t{0});
    tokens_routed = std::move(routed);
    return TROUPE_STATUS_OK;
  }
};

using entry = layer_entry<moe_instance>;

troupe_status create(const troupe_instance_config* config, troupe_instance** out,
                     troupe_error* error) {
  return guarded(error, [&] {
    model_shape model;
    TROUPE_TRY(cpu_model_shape(config, "moe", model, error));
    if (model.n_routed_experts == 0)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "the model has no routed experts (n_routed_experts = 0)");
    const auto options = nlohmann::json::parse(config->options_json);
    const std::string part = options.value("part", std::string("whole"));
    auto instance = std::make_unique<moe_instance>();
    if (part == "whole" || part == "routing") {
      const double alpha = options.value("balance_loss_alpha", 1e-4);
      if (!(alpha >= 0.0))
        return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "balance_loss_alpha must be >= 0");
      node_limit limit;
      if (options.contains("node_of_expert")) {
        limit.node_of = options["node_of_expert"].get<std::vector<std::int32_t>>();
        limit.max_nodes = options.value("max_nodes_per_token", std::int64_t{0});
        try {
          limit.check(model);
        } catch (const std::invalid_argument& e) {
          return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "{}", e.what());
        }
      }
      instance->layer = std::make_unique<moe_layer>(model, alpha, part == "routing", limit);
    } else if (part == "experts") {
      if (!options.contains("experts") || !options["experts"].is_array())
        return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                    "part \"experts\" needs \"experts\": a list of expert indices");
      std::set<std::int64_t> ids;
      for (const auto& id : options["experts"]) {
        const std::int64_t e = id.get<std::int64_t>();
        if (e < 0 || e >= model.n_routed_experts || !ids.insert(e).second)
          return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                      "expert {} is out of range (the model has {}) or listed twice", e,
                      model.n_routed_experts);
      }
      instance->experts =
          std::make_unique<expert_group>(model, std::vector<std::int64_t>(ids.begin(), ids.end()));
    } else {
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "option part = \"{}\": use \"whole\", \"routing\" or \"experts\"", part);
    }
    *out = reinterpret_cast<troupe_instance*>(instance.release());
    return TROUPE_STATUS_OK;
  });
}

troupe_status infer_outputs(troupe_instance* instance, const DLTensor* inputs,
                            std::int32_t num_inputs, troupe_tensor_spec* outputs,
                            std::int32_t* num_outputs, troupe_error* error) {
  moe_instance* moe = entry::of(instance);
  activation_shape shape;
  if (moe->experts) {
    if (num_inputs != 2)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "experts take rows and row_counts");
    TROUPE_TRY(
        check_activation(inputs[0], moe->experts->hidden(), "the expert rows", shape, error));
    if (*num_outputs < 1)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "room for one output needed");
    outputs[0] =
        troupe_tensor_spec{3, {shape.batch, shape.length, shape.width, 0}, {kDLFloat, 32, 1}};
    *num_outputs = 1;
    return TROUPE_STATUS_OK;
  }
  const moe_layer& layer = *moe->layer;
  if (num_inputs != 1) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "moe takes one input, x");
  troupe_exec_context where{};  // the input may be on any device the layer computes on
  where.device = inputs[0].device;
  TROUPE_TRY(check_activation(inputs[0], layer.hidden(), "the MoE input", shape, error, &where));
  const std::int32_t needed = layer.routing_only() ? 5 : 3;
  if (*num_outputs < needed)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "room for {} outputs needed", needed);
  outputs[0] =
      troupe_tensor_spec{3, {shape.batch, shape.length, shape.width, 0}, {kDLFloat, 32, 1}};
  outputs[1] = troupe_tensor_spec{1, {layer.experts(), 0, 0, 0}, {kDLInt, 64, 1}};
  outputs[2] = troupe_tensor_spec{1, {1, 0, 0, 0}, {kDLFloat, 32, 1}};
  if (layer.routing_only()) {
    outputs[3] =
        troupe_tensor_spec{3, {shape.batch, shape.length, layer.topk(), 0}, {kDLInt, 32, 1}};
    outputs[4] =
        troupe_tensor_spec{3, {shape.batch, shape.length, layer.topk(), 0}, {kDLFloat, 32, 1}};
  }
  *num_outputs = needed;
  return TROUPE_STATUS_OK;
}

troupe_status forward(troupe_instance* instance, const troupe_exec_context* context,
                      std::int64_t micro_batch, const DLTensor* inputs, std::int32_t num_inputs,
                      DLTensor* outputs, std::int32_t num_outputs, troupe_error* error) {
  moe_instance* moe = entry::of(instance);
  if (moe->experts) {
    if (num_inputs != 2 || num_outputs != 1)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "experts map (rows, row_counts) to y_rows");
    const troupe_status status =
        moe->experts->forward(context, micro_batch, inputs[0], inputs[1], outputs[0], error);
    if (status == TROUPE_STATUS_OK) moe->count_forward(context, nullptr);
    return status;
  }
  const bool routing = moe->layer->routing_only();
  if (num_inputs != 1 || num_outputs != (routing ? 5 : 3))
    return fail(
        error, TROUPE_STATUS_INVALID_ARGUMENT, "moe {} x to ({})",
        routing ? "routing maps" : "maps",
        routing ? "y_shared, counts, balance_loss, selected, gates" : "y, counts, balance_loss");
  const troupe_status status =
      moe->layer->forward(context, micro_batch, inputs[0], outputs[0], outputs[1], outputs[2],
                          routing ? &outputs[3] : nullptr, routing ? &outputs[4] : nullptr, error);
  if (status != TROUPE_STATUS_OK) return status;
  return guarded(error, [&] {
    moe->count_forward(context, &outputs[1]);
    return TROUPE_STATUS_OK;
  });
}

troupe_status backward(troupe_instance* instance, const troupe_exec_context* context,
                       std::int64_t micro_batch, troupe_backward_part part,
                       const DLTensor* output_grads, std::int32_t num_output_grads,
                       DLTensor* input_grads, std::int32_t num_input_grads, troupe_error* error) {
  moe_instance* moe = entry::of(instance);
  const bool has_grads = num_output_grads >= 1 && num_input_grads >= 1;
  if (moe->experts)
    return moe->experts->backward(context, micro_batch, part,
                                  has_grads ? &output_grads[0] : nullptr,
                                  has_grads ? &input_grads[0] : nullptr, error);
  float d_balance = 0.0f;
  if (num_output_grads >= 3 && output_grads[2].data != nullptr) {
    // A host scalar is read as it is (troupe's runtime passes one: no wait for the stream); one
    // on the device is copied back.
    if (output_grads[2].device.device_type == kDLCPU) {
      d_balance = *static_cast<const float*>(output_grads[2].data);
    } else {
      const troupe_status read = guarded(error, [&] {
        ops::copy_to_host(context, &d_balance, output_grads[2].data, sizeof(float));
        return TROUPE_STATUS_OK;
      });
      if (read != TROUPE_STATUS_OK) return read;
    }
  }
  const DLTensor* d_gates =
      num_output_grads >= 5 && output_grads[4].data != nullptr ? &output_grads[4] : nullptr;
  return moe->layer->backward(context, micro_batch, part, has_grads ? &output_grads[0] : nullptr,
                              d_balance, d_gates, has_grads ? &input_grads[0] : nullptr, error);
}

constexpr troupe_plugin table = entry::table(
    {TROUPE_PLUGIN_KIND_MOE, "moe", "1.2.0",
     "DeepSeekMoE: shared + fine-grained routed SwiGLU experts, aux-loss-free group-limited "
     "routing; whole layers (CPU and CUDA), or routing and expert groups for expert parallelism "
     "(CPU)"},
    &create, &infer_outputs, &forward, &backward);

}  // namespace

extern "C" TROUPE_PLUGIN_EXPORT const troupe_plugin* troupe_plugin_entry(void) {
  return &table;
}
