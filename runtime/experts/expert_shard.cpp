#include "runtime/experts/expert_shard.hpp"

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/model/decoder_layer.hpp"

namespace troupe {

std::vector<instance_slot> expert_shard::plugin_slots(plugin_kind kind) {
  std::vector<instance_slot> slots;
  if (kind == plugin_kind::moe)
    for (auto& [key, copy] : copies_) slots.push_back(&copy.instance);
  return slots;
}

namespace {

std::string experts_options(const std::string& moe_options, const std::vector<std::int64_t>& ids) {
  nlohmann::json options = nlohmann::json::parse(moe_options);
  options["part"] = "experts";
  options["experts"] = ids;
  return options.dump();
}

std::map<std::int64_t, std::vector<std::int64_t>> every_moe_layer(
    const model_config& config, const std::vector<std::int64_t>& experts) {
  std::map<std::int64_t, std::vector<std::int64_t>> layers;
  for (std::int64_t layer = 0; layer < config.num_hidden_layers + config.num_nextn_predict_layers;
       ++layer)
    if (config.n_routed_experts > 0 && layer >= config.first_k_dense_replace)
      layers[layer] = experts;
  return layers;
}

}  // namespace

expert_shard::expert_shard(const model_config& config, std::shared_ptr<const plugin_library> moe,
                           const std::vector<std::int64_t>& experts, int sources,
                           const std::string& moe_options)
    : expert_shard(config, std::move(moe), every_moe_layer(config, experts), sources, moe_options) {
}

expert_shard::expert_shard(const model_config& config, std::shared_ptr<const plugin_library> moe,
                           std::map<std::int64_t, std::vector<std::int64_t>> layer_experts,
                           int sources, const std::string& moe_options)
    : config_(config), layer_experts_(std::move(layer_experts)), sources_(sources) {
  if (!moe) fail("an expert shard needs the moe plugin");
  if (sources_ < 1) fail("an expert shard needs at least one source, got {}", sources_);
  const auto expected = every_moe_layer(config_, {});
  for (const auto& [layer, none] : expected)
    if (layer_experts_.count(layer) == 0)
      fail("expert shard: no experts listed for MoE layer {}", layer);
  for (const auto& [layer, ids] : layer_experts_) {
    if (expected.count(layer) == 0) fail("expert shard: layer {} is no MoE layer", layer);
    for (const std::int64_t e : ids)
      if (e < 0 || e >= config_.n_routed_experts)
        fail("expert shard: layer {} lists expert {} of {}", layer, e, config_.n_routed_experts);
    layers_.push_back(layer);
  }
  instance_options options;
  options.model_config_json = complete_json(config_);
  for (const std::int64_t layer : layers_) {
    options.layer_index = static_cast<int>(layer);
    options.options_json = experts_options(moe_options, layer_experts_.at(layer));
    for (std::int32_t source = 0; source < sources_; ++source) {
      layer_copy copy;
      copy.instance = std::make_unique<layer_instance>(moe, options);
      if (source == 0) declare_parameters(*copy.instance, layer, store_);
      copies_.emplace(std::make_pair(layer, source), std::move(copy));
    }
  }
  // Bind once the store holds every parameter (its tensors do not move after that).
  for (auto& [key, copy] : copies_) {
    const std::string prefix = fmt::format("model.layers.{}.", key.first);
    std::vector<std::string> names;
    for (const auto& spec : copy.instance->parameters()) names.push_back(prefix + spec.name);
    auto [values, grads] = bound_tensors(store_, names);
    if (key.second > 0) {
      for (auto& g : grads)
        if (g.defined()) g = tensor::zeros(g.type(), g.shape());
      copy.grads = grads;
    }
    copy.instance->bind(values, grads);
  }
}

expert_shard::layer_copy& expert_shard::copy_for(std::int64_t layer, std::int32_t source) {
  auto it = copies_.find({layer, source});
  if (it == copies_.end())
    fail("expert shard: layer {} source {} is not one of its MoE layers ({}) and sources ({})",
         layer, source, fmt::join(layers_, ", "), sources_);
  return it->second;
}

std::shared_ptr<const plugin_library> expert_shard::library() const {
  if (copies_.empty()) fail("expert shard: it holds no MoE layer");
  return copies_.begin()->second.instance->shared_library();
}

std::vector<parameter*> expert_shard::parameters_of(std::int64_t layer, std::int64_t expert) {
  const std::string prefix = fmt::format("model.layers.{}.mlp.experts.{}.", layer, expert);
  std::vector<parameter*> out;
  for (parameter* p : store_.all())
    if (p->name.compare(0, prefix.size(), prefix) == 0) out.push_back(p);
  return out;
}

expert_reply expert_shard::handle(const exec_context& context, const expert_request& request) {
  layer_copy& copy = copy_for(request.layer, request.source);
  const auto key = std::make_tuple(request.layer, request.source, request.micro_batch);
  expert_reply reply;
  using kind = expert_request::kind;
  switch (request.what) {
    case kind::forward: {
      const auto& experts = layer_experts_.at(request.layer);
      if (request.counts.size() != experts.size())
        fail("expert shard: layer {} micro-batch {}: {} row counts for {} experts", request.layer,
             request.micro_batch, request.counts.size(), experts.size());
      tensor rows = decode_rows(request.rows);
      const std::int64_t r = rows.size(0), h = rows.size(1);
      tensor input = rows.reshape({1, r, h});
      tensor counts = tensor::empty(dtype::i64, {static_cast<std::int64_t>(experts.size())});
      std::copy(request.counts.begin(), request.counts.end(), counts.data_as<std::int64_t>());
      // The plugin keeps a pointer to its input until backward: keep the tensor alive here.
      inputs_[key] = input;
      const tensor y = copy.instance->forward(context, request.micro_batch,
                                              std::vector<tensor>{input, counts})[0];
      reply.rows = encode_rows(y.reshape({r, h}), request.reply_precision);
      break;
    }
    case kind::backward_input: {
      tensor dy = decode_rows(request.rows);
      const std::int64_t r = dy.size(0), h = dy.size(1);
      tensor dx = tensor::zeros(dtype::f32, {1, r, h});
      copy.instance->backward(context, request.micro_batch, TROUPE_BACKWARD_INPUT,
                              std::vector<tensor>{dy.reshape({1, r, h})}, std::vector<tensor>{dx});
      reply.rows = encode_rows(dx.reshape({r, h}), request.reply_precision);
      break;
    }
    case kind::backward_weight:
      copy.instance->backward(context, request.micro_batch, TROUPE_BACKWARD_WEIGHT, {}, {});
      inputs_.erase(key);
      break;
    case kind::forget:
      copy.instance->forget(request.micro_batch);
      inputs_.erase(key);
      break;
    default:
      fail("expert shard: layer {}: a request of unknown kind {}", request.layer,
           static_cast<int>(request.what));
  }
  return reply;
}

void expert_shard::reduce_source_gradients() {
  for (auto& [key, copy] : copies_) {
    if (key.second == 0) continue;
    const std::string prefix = fmt::format("model.layers.{}.", key.first);
    const auto specs = copy.instance->parameters();
    for (std::size_t i = 0; i < specs.size(); ++i) {
      tensor& extra = copy.grads[i];
      if (!extra.defined()) continue;
      parameter& p = store_.at(prefix + specs[i].name);
      float* target = p.grad.data_as<float>();
      float* source = extra.data_as<float>();
      for (std::int64_t j = 0; j < extra.numel(); ++j) {
        target[j] += source[j];
        source[j] = 0.0f;
      }
    }
  }
}

void expert_shard::zero_grads(thread_pool* pool) {
  store_.zero_grads(pool);
  for (auto& [key, copy] : copies_)
    for (auto& g : copy.grads)
      if (g.defined()) std::fill_n(g.data_as<float>(), g.numel(), 0.0f);
}

}  // namespace troupe
