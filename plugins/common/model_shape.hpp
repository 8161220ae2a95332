#pragma once

// The model a layer plugin computes, as the runtime hands it over: instance_config's
// model_config_json holds (ABI 1.1) every field the runtime knows written out, its defaults
// applied and rope scaling in one spelling (runtime/model/model_config.hpp, complete_json). So
// this reader has no defaults of its own and no validation to repeat: a field that is not there
// is an error naming it. Header-only, so plugins do not compile the runtime's parser in.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace troupe::plugin {

struct yarn_shape {
  double factor = 1.0;
  std::int64_t original_max_position_embeddings = 0;
  double beta_fast = 0.0;
  double beta_slow = 0.0;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
};

struct model_shape {
  std::int64_t hidden_size = 0;
  std::int64_t moe_intermediate_size = 0;
  std::int64_t num_attention_heads = 0;
  std::optional<std::int64_t> q_lora_rank;  ///< nullopt: a plain q projection
  std::int64_t kv_lora_rank = 0;
  std::int64_t qk_nope_head_dim = 0;
  std::int64_t qk_rope_head_dim = 0;
  std::int64_t v_head_dim = 0;
  std::int64_t n_routed_experts = 0;
  std::int64_t n_shared_experts = 0;
  std::int64_t num_experts_per_tok = 0;
  std::int64_t n_group = 0;
  std::int64_t topk_group = 0;
  double routed_scaling_factor = 0.0;
  bool norm_topk_prob = false;
  double rope_theta = 0.0;
  std::optional<yarn_shape> yarn;  ///< nullopt: plain RoPE
  double rms_norm_eps = 0.0;

  std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

namespace detail {
template <class T>
T field(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null())
    throw std::runtime_error(std::string("the model config has no '") + key + "'");
  return it->get<T>();
}
}  // namespace detail

/// Reads the runtime's complete model config; throws std::runtime_error naming a missing field.
inline model_shape read_model_shape(const std::string& json_text) {
  const nlohmann::json j = nlohmann::json::parse(json_text);
  using detail::field;
  model_shape m;
  m.hidden_size = field<std::int64_t>(j, "hidden_size");
  m.moe_intermediate_size = field<std::int64_t>(j, "moe_intermediate_size");
  m.num_attention_heads = field<std::int64_t>(j, "num_attention_heads");
  if (!j.contains("q_lora_rank")) throw std::runtime_error("the model config has no 'q_lora_rank'");
  if (!j["q_lora_rank"].is_null()) m.q_lora_rank = j["q_lora_rank"].get<std::int64_t>();
  m.kv_lora_rank = field<std::int64_t>(j, "kv_lora_rank");
  m.qk_nope_head_dim = field<std::int64_t>(j, "qk_nope_head_dim");
  m.qk_rope_head_dim = field<std::int64_t>(j, "qk_rope_head_dim");
  m.v_head_dim = field<std::int64_t>(j, "v_head_dim");
  m.n_routed_experts = field<std::int64_t>(j, "n_routed_experts");
  m.n_shared_experts = field<std::int64_t>(j, "n_shared_experts");
  m.num_experts_per_tok = field<std::int64_t>(j, "num_experts_per_tok");
  m.n_group = field<std::int64_t>(j, "n_group");
  m.topk_group = field<std::int64_t>(j, "topk_group");
  m.routed_scaling_factor = field<double>(j, "routed_scaling_factor");
  m.norm_topk_prob = field<bool>(j, "norm_topk_prob");
  m.rope_theta = field<double>(j, "rope_theta");
  m.rms_norm_eps = field<double>(j, "rms_norm_eps");
  if (!j.contains("rope_scaling"))
    throw std::runtime_error("the model config has no 'rope_scaling'");
  if (const auto& rope = j["rope_scaling"]; !rope.is_null()) {
    yarn_shape y;
    y.factor = field<double>(rope, "factor");
    y.original_max_position_embeddings =
        field<std::int64_t>(rope, "original_max_position_embeddings");
    y.beta_fast = field<double>(rope, "beta_fast");
    y.beta_slow = field<double>(rope, "beta_slow");
    y.mscale = field<double>(rope, "mscale");
    y.mscale_all_dim = field<double>(rope, "mscale_all_dim");
    m.yarn = y;
  }
  return m;
}

}  // namespace troupe::plugin
