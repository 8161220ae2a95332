#include "runtime/plugin/instance.hpp"

#include <algorithm>
#include <cstddef>

#include <fmt/ranges.h>

namespace troupe {

namespace {

std::string status_name(troupe_status status) {
  switch (status) {
    case TROUPE_STATUS_OK:
      return "ok";
    case TROUPE_STATUS_INVALID_ARGUMENT:
      return "invalid argument";
    case TROUPE_STATUS_UNSUPPORTED:
      return "unsupported";
    case TROUPE_STATUS_OUT_OF_MEMORY:
      return "out of memory";
    case TROUPE_STATUS_INTERNAL:
      return "internal error";
  }
  return fmt::format("status {}", static_cast<int>(status));
}

std::string message_of(const troupe_error& detail) {
  // The plugin may not have terminated the buffer.
  std::size_t length = 0;
  while (length < sizeof(detail.message) && detail.message[length] != '\0') ++length;
  return length == 0 ? std::string("(no message)") : std::string(detail.message, length);
}

/// Calls a plugin function and throws plugin_call_error when it does not return OK.
template <class Fn, class... Args>
void call_checked(const plugin_library& library, std::string_view name, Fn fn, Args... args) {
  troupe_error detail{};
  troupe_status status = fn(args..., &detail);
  if (status != TROUPE_STATUS_OK) throw plugin_call_error(library, name, status, detail);
}

troupe_instance* create_instance(const plugin_library& library, const instance_options& options) {
  troupe_instance_config config{};
  config.struct_size = sizeof(config);
  config.model_config_json = options.model_config_json.c_str();
  config.options_json = options.options_json.c_str();
  config.layer_index = options.layer_index;
  config.device = to_dlpack(options.where);
  troupe_instance* instance = nullptr;
  call_checked(library, "create", library.api->create, &config, &instance);
  if (instance == nullptr)
    throw plugin_call_error(library, "create", TROUPE_STATUS_INTERNAL,
                            troupe_error{"create() returned OK but no instance"});
  return instance;
}

std::vector<DLTensor> views(std::span<const tensor> tensors) {
  std::vector<DLTensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) {
    if (t.defined()) {
      out.push_back(t.dl_view());
    } else {
      DLTensor empty{};
      out.push_back(empty);
    }
  }
  return out;
}

tensor_spec spec_from_abi(const troupe_tensor_spec& spec, const plugin_library& library) {
  auto type = from_dlpack(spec.dtype);
  if (!type || spec.ndim < 0 || spec.ndim > TROUPE_MAX_DIMS)
    throw plugin_call_error(library, "infer_outputs", TROUPE_STATUS_INTERNAL,
                            troupe_error{"an output spec has an invalid dtype or rank"});
  return {std::vector<std::int64_t>(spec.shape, spec.shape + spec.ndim), *type};
}

}  // namespace

plugin_call_error::plugin_call_error(const plugin_library& library, std::string_view call,
                                     troupe_status status, const troupe_error& detail)
    : error(fmt::format("plugin '{}' {} ({}): {}() failed ({}): {}", library.name, library.version,
                        library.file.string(), call, status_name(status), message_of(detail))),
      status_(status) {}

layer_instance::layer_instance(std::shared_ptr<const plugin_library> library,
                               const instance_options& options)
    : library_(std::move(library)), options_(options) {
  TROUPE_CHECK(is_layer_kind(library_->kind), "plugin '{}' is a {} plugin, not a layer",
               library_->name, name_of(library_->kind));
  instance_ = create_instance(*library_, options);
}

layer_instance::~layer_instance() {
  library_->api->destroy(instance_);
}

std::vector<parameter_spec> layer_instance::parameters() const {
  const troupe_param_spec* specs = nullptr;
  std::int32_t count = 0;
  call_checked(*library_, "parameters", library_->api->parameters, instance_, &specs, &count);
  std::vector<parameter_spec> out;
  for (std::int32_t i = 0; i < count; ++i) {
    const auto& s = specs[i];
    auto type = from_dlpack(s.dtype);
    if (!type || s.ndim < 0 || s.ndim > TROUPE_MAX_DIMS || s.name == nullptr)
      throw plugin_call_error(*library_, "parameters", TROUPE_STATUS_INTERNAL,
                              troupe_error{"a parameter spec has no name, a bad rank or dtype"});
    out.push_back({s.name, std::vector<std::int64_t>(s.shape, s.shape + s.ndim), *type, s.init,
                   s.init_scale, s.flags});
  }
  return out;
}

void layer_instance::bind(std::span<const tensor> params, std::span<const tensor> grads) {
  TROUPE_CHECK(params.size() == grads.size(), "bind needs one gradient per parameter");
  auto param_views = views(params);
  auto grad_views = views(grads);
  call_checked(*library_, "bind", library_->api->bind, instance_, param_views.data(),
               grad_views.data(), static_cast<std::int32_t>(params.size()));
  bound_params_.assign(params.begin(), params.end());
  bound_grads_.assign(grads.begin(), grads.end());
}

std::vector<tensor_spec> layer_instance::infer_outputs(std::span<const tensor> inputs) const {
  auto input_views = views(inputs);
  std::vector<troupe_tensor_spec> specs(16);
  auto count = static_cast<std::int32_t>(specs.size());
  call_checked(*library_, "infer_outputs", library_->api->infer_outputs, instance_,
               input_views.data(), static_cast<std::int32_t>(inputs.size()), specs.data(), &count);
  std::vector<tensor_spec> out;
  for (std::int32_t i = 0; i < count && i < static_cast<std::int32_t>(specs.size()); ++i)
    out.push_back(spec_from_abi(specs[static_cast<std::size_t>(i)], *library_));
  return out;
}

std::vector<tensor> layer_instance::forward(const exec_context& context, std::int64_t micro_batch,
                                            std::span<const tensor> inputs) {
  const context_stream_scope on_stream(context);
  std::vector<tensor> outputs;
  for (const auto& spec : infer_outputs(inputs))
    outputs.push_back(tensor::empty(spec.type, spec.shape, context.where()));
  auto input_views = views(inputs);
  auto output_views = views(outputs);
  call_checked(*library_, "forward", library_->api->forward, instance_, context.abi(), micro_batch,
               input_views.data(), static_cast<std::int32_t>(inputs.size()), output_views.data(),
               static_cast<std::int32_t>(outputs.size()));
  return outputs;
}

void layer_instance::backward(const exec_context& context, std::int64_t micro_batch,
                              troupe_backward_part part, std::span<const tensor> output_grads,
                              std::span<const tensor> input_grads) {
  const context_stream_scope on_stream(context);
  auto output_views = views(output_grads);
  auto input_views = views(input_grads);
  call_checked(*library_, "backward", library_->api->backward, instance_, context.abi(),
               micro_batch, part, output_views.data(),
               static_cast<std::int32_t>(output_grads.size()), input_views.data(),
               static_cast<std::int32_t>(input_grads.size()));
}

void layer_instance::forget(std::int64_t micro_batch) {
  library_->api->forget(instance_, micro_batch);
}

bool computes_cached(const plugin_library& library) {
  const auto* api = library.api;
  return api != nullptr &&
         api->struct_size >=
             offsetof(troupe_plugin, forward_cached) + sizeof(api->forward_cached) &&
         api->forward_cached != nullptr;
}

bool layer_instance::computes_cached() const {
  return troupe::computes_cached(*library_);
}

tensor layer_instance::forward_cached(const exec_context& context, const troupe_kv_cache& cache,
                                      const tensor& x) {
  if (!computes_cached())
    fail(
        "plugin '{}' {} ({}) has no cached forward (ABI 1.2 forward_cached): it cannot decode "
        "over a KV cache",
        library_->name, library_->version, library_->file.string());
  const context_stream_scope on_stream(context);
  tensor y = tensor::empty(dtype::f32, x.shape(), context.where());
  const DLTensor x_view = x.dl_view();
  DLTensor y_view = y.dl_view();
  call_checked(*library_, "forward_cached", library_->api->forward_cached, instance_, context.abi(),
               &cache, &x_view, &y_view);
  return y;
}

std::vector<std::uint8_t> layer_instance::export_state() {
  troupe_blob blob{};
  call_checked(*library_, "export_state", library_->api->export_state, instance_, &blob);
  std::vector<std::uint8_t> out(static_cast<const std::uint8_t*>(blob.data),
                                static_cast<const std::uint8_t*>(blob.data) + blob.size);
  if (blob.release != nullptr) blob.release(blob.data);
  return out;
}

void layer_instance::import_state(std::span<const std::uint8_t> state) {
  call_checked(*library_, "import_state", library_->api->import_state, instance_, state.data(),
               state.size());
}

std::string layer_instance::statistics() const {
  if (library_->api->statistics == nullptr) return "{}";
  const char* json = library_->api->statistics(instance_);
  return json != nullptr ? std::string(json) : std::string("{}");
}

std::unique_ptr<layer_instance> layer_instance::successor(
    std::shared_ptr<const plugin_library> library) {
  TROUPE_CHECK(library->kind == library_->kind,
               "plugin '{}' is a {} plugin; the instance it would replace is a {} plugin",
               library->name, name_of(library->kind), name_of(library_->kind));
  auto next = std::make_unique<layer_instance>(library, options_);
  const auto mine = parameters();
  const auto theirs = next->parameters();
  const auto describe = [](const parameter_spec& p) {
    return fmt::format("{} [{}] {}{}", p.name, fmt::join(p.shape, ", "), name_of(p.type),
                       p.buffer() ? " (buffer)" : "");
  };
  for (std::size_t i = 0; i < std::max(mine.size(), theirs.size()); ++i) {
    const bool same = i < mine.size() && i < theirs.size() && mine[i].name == theirs[i].name &&
                      mine[i].shape == theirs[i].shape && mine[i].type == theirs[i].type &&
                      mine[i].flags == theirs[i].flags;
    if (!same)
      fail(
          "plugin '{}' {} ({}) declares other parameters than '{}' {} (parameter {}: {} instead "
          "of {}); a swap keeps the runtime's parameters, so both must declare the same ones",
          library->name, library->version, library->file.string(), library_->name,
          library_->version, i, i < theirs.size() ? describe(theirs[i]) : "none",
          i < mine.size() ? describe(mine[i]) : "none");
  }
  if (!bound_params_.empty()) next->bind(bound_params_, bound_grads_);
  next->import_state(export_state());
  return next;
}

gemm_instance::gemm_instance(std::shared_ptr<const plugin_library> library,
                             const instance_options& options)
    : library_(std::move(library)) {
  TROUPE_CHECK(library_->kind == plugin_kind::gemm,
               "plugin '{}' is a {} plugin, not a gemm provider", library_->name,
               name_of(library_->kind));
  instance_ = create_instance(*library_, options);
  provider_ = library_->api->gemm_provider(instance_);
  if (provider_ == nullptr || provider_->gemm == nullptr) {
    library_->api->destroy(instance_);
    throw plugin_call_error(*library_, "gemm_provider", TROUPE_STATUS_INTERNAL,
                            troupe_error{"returned no provider"});
  }
}

gemm_instance::~gemm_instance() {
  library_->api->destroy(instance_);
}

void run_gemm(const exec_context& context, const troupe_gemm_call& call) {
  const troupe_gemm_provider* provider = context.gemm_provider();
  troupe_error detail{};
  if (provider->gemm(provider->self, context.abi(), &call, &detail) != TROUPE_STATUS_OK)
    fail("GEMM provider '{}' failed: {}", provider->name, message_of(detail));
}

}  // namespace troupe
