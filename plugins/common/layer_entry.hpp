#pragma once

// The C ABI entry points every layer plugin in this tree implements the same way, for a C++
// layer class that keeps nothing but per-micro-batch activations (its parameters live with the
// runtime): destroy, parameters, bind, forget, state export/import (empty) and statistics.
// A plugin writes create, infer_outputs, forward and backward, whose inputs and outputs are its
// own, and builds its table with layer_entry<Layer>::table(...).
//
// Layer needs: parameters() -> const parameter_list&, bind(params, grads, count, error),
// forget(micro_batch), and optionally statistics() -> const std::string&. A layer with state of
// its own (counters a hot swap carries over) adds export_state() -> std::string and
// import_state(std::string_view, troupe_error*) -> troupe_status; others export nothing.

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "plugins/common/model_shape.hpp"
#include "plugins/common/plugin_support.hpp"

namespace troupe::plugin {

/// The model of a CPU-only layer plugin's new instance; fails for any other device.
inline troupe_status cpu_model_shape(const troupe_instance_config* config, const char* plugin,
                                     model_shape& out, troupe_error* error) {
  if (config->device.device_type != kDLCPU)
    return fail(error, TROUPE_STATUS_UNSUPPORTED,
                "the {} plugin runs on the CPU; no CUDA implementation yet", plugin);
  return guarded(error, [&] {
    out = read_model_shape(config->model_config_json);
    return TROUPE_STATUS_OK;
  });
}

template <class Layer>
struct layer_entry {
  static Layer* of(troupe_instance* instance) { return reinterpret_cast<Layer*>(instance); }

  static troupe_status init(const troupe_host*, troupe_error*) { return TROUPE_STATUS_OK; }

  static void destroy(troupe_instance* instance) { delete of(instance); }

  static troupe_status parameters(troupe_instance* instance, const troupe_param_spec** specs,
                                  std::int32_t* count, troupe_error*) {
    *specs = of(instance)->parameters().specs().data();
    *count = static_cast<std::int32_t>(of(instance)->parameters().specs().size());
    return TROUPE_STATUS_OK;
  }

  static troupe_status bind(troupe_instance* instance, const DLTensor* params,
                            const DLTensor* grads, std::int32_t count, troupe_error* error) {
    return guarded(error, [&] { return of(instance)->bind(params, grads, count, error); });
  }

  static void forget(troupe_instance* instance, std::int64_t micro_batch) {
    of(instance)->forget(micro_batch);
  }

  static troupe_status export_state(troupe_instance* instance, troupe_blob* state,
                                    troupe_error* error) {
    *state = troupe_blob{nullptr, 0, nullptr};
    if constexpr (requires(Layer & layer) { layer.export_state(); }) {
      return guarded(error, [&] {
        const std::string bytes = of(instance)->export_state();
        char* copy = new char[bytes.size()];
        std::copy(bytes.begin(), bytes.end(), copy);
        *state =
            troupe_blob{copy, bytes.size(), [](void* data) { delete[] static_cast<char*>(data); }};
        return TROUPE_STATUS_OK;
      });
    }
    return TROUPE_STATUS_OK;
  }

  static troupe_status import_state(troupe_instance* instance, const void* data, std::size_t size,
                                    troupe_error* error) {
    if constexpr (requires(Layer & layer) { layer.export_state(); }) {
      return guarded(error, [&] {
        return of(instance)->import_state(std::string_view(static_cast<const char*>(data), size),
                                          error);
      });
    }
    if (size != 0)
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "this plugin keeps no state of its own; got {} bytes", size);
    return TROUPE_STATUS_OK;
  }

  static const char* statistics(troupe_instance* instance) {
    return of(instance)->statistics().c_str();
  }

  struct identity {
    troupe_plugin_kind kind;
    const char* name;
    const char* version;
    const char* description;
  };

  static constexpr troupe_plugin table(
      identity id, decltype(troupe_plugin::create) create,
      decltype(troupe_plugin::infer_outputs) infer_outputs,
      decltype(troupe_plugin::forward) forward, decltype(troupe_plugin::backward) backward,
      decltype(troupe_plugin::forward_cached) forward_cached = nullptr) {
    constexpr bool has_statistics = requires(Layer & layer) {
      layer.statistics();
    };
    return troupe_plugin{
        TROUPE_PLUGIN_ABI_MAJOR,
        TROUPE_PLUGIN_ABI_MINOR,
        sizeof(troupe_plugin),
        id.kind,
        id.name,
        id.version,
        id.description,
        &init,
        create,
        &destroy,
        &parameters,
        &bind,
        infer_outputs,
        forward,
        backward,
        &forget,
        &export_state,
        &import_state,
        nullptr,  // gemm_provider
        has_statistics ? &statistics_if_any : nullptr,
        forward_cached,
    };
  }

 private:
  static const char* statistics_if_any(troupe_instance* instance) {
    if constexpr (requires(Layer & layer) { layer.statistics(); })
      return statistics(instance);
    else
      return nullptr;
  }
};

}  // namespace troupe::plugin
