#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/core/error.hpp"
#include "runtime/core/source_position.hpp"

namespace troupe {

/// YaRN context extension (rope_scaling / rope_parameters with type "yarn").
struct yarn_config {
  double factor = 1.0;
  std::int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

/// FP8 block quantization of a checkpoint (quantization_config).
struct fp8_quantization_config {
  std::int64_t block_rows = 128;
  std::int64_t block_cols = 128;
  std::string activation_scheme = "dynamic";
};

/// A DeepSeek-V3 model as Hugging Face's DeepseekV3 config.json describes it. Fields a file
/// leaves out take transformers' DeepseekV3Config defaults (listed in `defaulted`).
struct model_config {
  std::int64_t vocab_size = 129280;
  std::int64_t hidden_size = 7168;
  std::int64_t intermediate_size = 18432;
  std::int64_t moe_intermediate_size = 2048;
  std::int64_t num_hidden_layers = 61;
  std::int64_t first_k_dense_replace = 3;
  std::int64_t num_attention_heads = 128;
  std::optional<std::int64_t> q_lora_rank = 1536;  ///< nullopt: a plain q projection
  std::int64_t kv_lora_rank = 512;
  std::int64_t qk_nope_head_dim = 128;
  std::int64_t qk_rope_head_dim = 64;
  std::int64_t v_head_dim = 128;
  std::int64_t n_routed_experts = 256;
  std::int64_t n_shared_experts = 1;
  std::int64_t num_experts_per_tok = 8;
  std::int64_t n_group = 8;
  std::int64_t topk_group = 4;
  double routed_scaling_factor = 2.5;
  bool norm_topk_prob = true;
  std::string scoring_func = "sigmoid";
  std::string topk_method = "noaux_tc";
  std::string hidden_act = "silu";
  double rope_theta = 10000.0;
  std::optional<yarn_config> yarn;  ///< nullopt: plain RoPE
  bool rope_interleave = true;
  double rms_norm_eps = 1e-6;
  std::int64_t max_position_embeddings = 4096;
  std::int64_t num_nextn_predict_layers = 0;
  bool tie_word_embeddings = false;
  std::optional<fp8_quantization_config> quantization;
  std::int64_t bos_token_id = 0;  ///< DeepSeek-V3's values; the tokenizer's special tokens
  std::int64_t eos_token_id = 1;

  /// Fields the source left out, in the order above.
  std::vector<std::string> defaulted;
  /// The source as JSON text (what a checkpoint's config.json keeps).
  std::string json_text;

  /// True for layers whose feed-forward block is MoE.
  bool is_moe_layer(std::int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer < num_hidden_layers;
  }
  std::int64_t moe_layer_count() const;
  std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  /// Parameter count of the main model and of the MTP modules (embedding counted once).
  std::int64_t parameter_count() const;
  /// Parameters a pipeline stage holding `layers` keeps: those layers, the embedding with layer
  /// 0, and the final norm, the head and the MTP modules with the last layer.
  std::int64_t stage_parameter_count(const std::vector<int>& layers) const;
  /// Of those, the routed experts' weights (the MoE layers' and, with the last layer, the MTP
  /// modules').
  std::int64_t stage_routed_expert_parameter_count(const std::vector<int>& layers) const;
};

/// A model config field with a missing, mistyped or unsupported value.
class model_config_error : public error {
 public:
  model_config_error(source_position where, std::string field, std::string problem);
  const source_position& where() const { return where_; }
  const std::string& field() const { return field_; }
  /// The message without the position.
  const std::string& problem() const { return problem_; }

 private:
  source_position where_;
  std::string field_;
  std::string problem_;
};

/// Where a field sits in the source, for error messages.
using field_locator = source_position (*)(const void* context, const std::string& field);

/// Parses and validates a config. `source_name` and `locate` say where errors point. Throws
/// model_config_error naming the place and the field for a missing, mistyped or unsupported value.
model_config parse_model_config(const nlohmann::json& source, const std::string& source_name,
                                field_locator locate = nullptr,
                                const void* locate_context = nullptr);

/// The config with every field written out (its defaults applied, rope scaling as
/// "rope_scaling"): what plugins get as model_config_json (ABI 1.1), so that they need no defaults
/// and no parser of their own. Parsing it gives `config` back.
std::string complete_json(const model_config& config);

/// Reads a config.json file (errors name the file and the line of the field).
model_config load_model_config(const std::filesystem::path& file);

}  // namespace troupe
