#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// A plugin function reported an error: names the plugin, the library, the call and the cause.
class plugin_call_error : public error {
 public:
  plugin_call_error(const plugin_library& library, std::string_view call, troupe_status status,
                    const troupe_error& detail);
  troupe_status status() const { return status_; }

 private:
  troupe_status status_;
};

/// A parameter as a layer plugin declares it (a C++ copy of troupe_param_spec).
struct parameter_spec {
  std::string name;
  std::vector<std::int64_t> shape;
  dtype type = dtype::f32;
  troupe_param_init init = TROUPE_INIT_ZEROS;
  float init_scale = 0.0f;
  std::uint32_t flags = 0;

  bool trainable() const { return (flags & TROUPE_PARAM_TRAINABLE) != 0; }
  bool buffer() const { return (flags & TROUPE_PARAM_BUFFER) != 0; }
  /// The MoE router's selection bias, set by the bias balancer.
  bool router_bias() const { return (flags & TROUPE_PARAM_ROUTER_BIAS) != 0; }
  /// The layer overwrites the gradient at its first backward after each zeroing (ABI 1.5).
  bool grad_overwritten() const { return (flags & TROUPE_PARAM_GRAD_OVERWRITTEN) != 0; }
};

struct tensor_spec {
  std::vector<std::int64_t> shape;
  dtype type = dtype::f32;
};

/// How to create an instance.
struct instance_options {
  std::string model_config_json = "{}";
  std::string options_json = "{}";
  int layer_index = -1;
  device where = device::cpu();
};

/// One instance of a layer plugin (attention, moe, mtp): create() in the constructor, destroy()
/// in the destructor, every call checked and turned into a plugin_call_error on failure.
/// Whether `library`'s instances run inference over the KV cache (forward_cached, ABI 1.2).
bool computes_cached(const plugin_library& library);

class layer_instance {
 public:
  layer_instance(std::shared_ptr<const plugin_library> library, const instance_options& options);
  ~layer_instance();
  layer_instance(const layer_instance&) = delete;
  layer_instance& operator=(const layer_instance&) = delete;

  const plugin_library& library() const { return *library_; }
  std::shared_ptr<const plugin_library> shared_library() const { return library_; }

  std::vector<parameter_spec> parameters() const;
  /// Binds parameter and gradient tensors in parameters() order; a buffer's gradient is an
  /// undefined tensor. The tensors must stay alive while bound.
  void bind(std::span<const tensor> params, std::span<const tensor> grads);
  std::vector<tensor_spec> infer_outputs(std::span<const tensor> inputs) const;
  /// Allocates outputs (infer_outputs) and runs forward.
  std::vector<tensor> forward(const exec_context& context, std::int64_t micro_batch,
                              std::span<const tensor> inputs);
  /// Accumulates into `input_grads` and the bound parameter gradients.
  void backward(const exec_context& context, std::int64_t micro_batch, troupe_backward_part part,
                std::span<const tensor> output_grads, std::span<const tensor> input_grads);
  void forget(std::int64_t micro_batch);
  /// Whether the plugin runs inference over the KV cache (forward_cached, ABI 1.2).
  bool computes_cached() const;
  /// Inference forward of new tokens x [1, rows, hidden] over the cache (forward_cached): writes
  /// their rows into the cache and returns y [1, rows, hidden]. Throws troupe::error when the
  /// plugin has no forward_cached.
  tensor forward_cached(const exec_context& context, const troupe_kv_cache& cache, const tensor& x);
  std::vector<std::uint8_t> export_state();
  void import_state(std::span<const std::uint8_t> state);
  /// The plugin's statistics JSON ("{}" when it has none).
  std::string statistics() const;

  /// This instance's successor from `library` (another build, or another generation of the same
  /// one), ready to take over: created with the same options, checked to declare the same
  /// parameters (they stay with the runtime), bound to the same tensors, and given this
  /// instance's exported state. Throws plugin_call_error or troupe::error naming the cause; this
  /// instance is unchanged either way. Call between micro-batches (nothing saved in flight).
  std::unique_ptr<layer_instance> successor(std::shared_ptr<const plugin_library> library);

 private:
  std::shared_ptr<const plugin_library> library_;
  instance_options options_;
  std::vector<tensor> bound_params_, bound_grads_;  // what bind() got, for a successor
  troupe_instance* instance_ = nullptr;
};

/// One instance of a GEMM plugin; provider() is what an exec_context uses.
class gemm_instance {
 public:
  gemm_instance(std::shared_ptr<const plugin_library> library, const instance_options& options);
  ~gemm_instance();
  gemm_instance(const gemm_instance&) = delete;
  gemm_instance& operator=(const gemm_instance&) = delete;

  const plugin_library& library() const { return *library_; }
  const troupe_gemm_provider* provider() const { return provider_; }

 private:
  std::shared_ptr<const plugin_library> library_;
  troupe_instance* instance_ = nullptr;
  const troupe_gemm_provider* provider_ = nullptr;
};

/// Runs `call` on the provider; throws troupe::error with the provider's message on failure.
void run_gemm(const exec_context& context, const troupe_gemm_call& call);

}  // namespace troupe
