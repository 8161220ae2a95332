#include "runtime/model/model_config.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/core/input_limits.hpp"

namespace troupe {

namespace {

using json = nlohmann::json;

class field_reader {
 public:
  field_reader(const json& source, const std::string& source_name, field_locator locate,
               const void* context, model_config& out)
      : source_(source), name_(source_name), locate_(locate), context_(context), out_(out) {}

  [[noreturn]] void fail_field(const std::string& field, const std::string& problem) const {
    source_position where = locate_ != nullptr ? locate_(context_, field) : source_position{name_};
    throw model_config_error(std::move(where), field, problem);
  }

  /// The field's value, or nullptr (and the field is recorded as defaulted).
  const json* find(const std::string& field) {
    const json* value = find_optional(field);
    if (value == nullptr) out_.defaulted.push_back(field);
    return value;
  }

  /// The field's value or nullptr, for fields whose absence means "none" rather than a default.
  const json* find_optional(const std::string& field) const {
    auto it = source_.find(field);
    return it == source_.end() ? nullptr : &*it;
  }

  /// An integer field within [minimum, maximum]: the maxima are far above any real model and
  /// keep every product of two sizes inside 64 bits (and every loop over layers short).
  void integer(const std::string& field, std::int64_t& value, std::int64_t minimum,
               std::int64_t maximum = std::int64_t{1} << 24) {
    if (const json* v = find(field)) {
      if (v->is_number_unsigned() && v->get<std::uint64_t>() > std::uint64_t{1} << 62)
        fail_field(field, fmt::format("must be at most {}, got {}", maximum, v->dump()));
      if (!v->is_number_integer())
        fail_field(field, fmt::format("must be an integer, got {}", v->dump()));
      value = v->get<std::int64_t>();
    }
    if (value < minimum)
      fail_field(field, fmt::format("must be at least {}, got {}", minimum, value));
    if (value > maximum)
      fail_field(field, fmt::format("must be at most {}, got {}", maximum, value));
  }

  void number(const std::string& field, double& value, bool positive) {
    if (const json* v = find(field)) {
      if (!v->is_number()) fail_field(field, fmt::format("must be a number, got {}", v->dump()));
      value = v->get<double>();
    }
    if (!std::isfinite(value)) fail_field(field, fmt::format("must be finite, got {}", value));
    if (positive && !(value > 0.0))
      fail_field(field, fmt::format("must be positive, got {}", value));
  }

  void boolean(const std::string& field, bool& value) {
    if (const json* v = find(field)) {
      if (!v->is_boolean())
        fail_field(field, fmt::format("must be true or false, got {}", v->dump()));
      value = v->get<bool>();
    }
  }

  void choice(const std::string& field, std::string& value,
              std::initializer_list<const char*> allowed, const std::string& why_only) {
    if (const json* v = find(field)) {
      if (!v->is_string()) fail_field(field, fmt::format("must be a string, got {}", v->dump()));
      value = v->get<std::string>();
    }
    for (const char* ok : allowed)
      if (value == ok) return;
    fail_field(field, fmt::format("\"{}\" is not supported: {}", value, why_only));
  }

  /// `object[key]`, a member of the object field `parent`, as a string, or `fallback` when
  /// absent.
  std::string member_string(const json& object, const std::string& parent, const char* key,
                            std::string fallback) const {
    const auto it = object.find(key);
    if (it == object.end()) return fallback;
    if (!it->is_string())
      fail_field(parent + "." + key, fmt::format("must be a string, got {}", it->dump()));
    return it->get<std::string>();
  }

  const json& source() const { return source_; }

 private:
  const json& source_;
  const std::string& name_;
  field_locator locate_;
  const void* context_;
  model_config& out_;
};

void read_rope(field_reader& r, const json& source, model_config& c) {
  // transformers 5 spells it rope_parameters (with rope_theta inside); older files rope_scaling.
  const char* field = source.contains("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const json* rope = r.find_optional(field);
  if (rope == nullptr || rope->is_null()) return;
  if (!rope->is_object()) r.fail_field(field, "must be an object or null");
  const std::string type =
      r.member_string(*rope, field, "rope_type", r.member_string(*rope, field, "type", "default"));
  if (rope->contains("rope_theta")) {
    if (!(*rope)["rope_theta"].is_number())
      r.fail_field(std::string(field) + ".rope_theta", "must be a number");
    c.rope_theta = (*rope)["rope_theta"].get<double>();
  }
  if (type == "default") return;
  if (type != "yarn")
    r.fail_field(
        std::string(field) + ".rope_type",
        fmt::format("\"{}\" is not supported: DeepSeek-V3 uses \"yarn\" (or no scaling)", type));
  yarn_config y;
  auto number = [&](const char* key, double& value) {
    if (!rope->contains(key)) return;
    if (!(*rope)[key].is_number())
      r.fail_field(fmt::format("{}.{}", field, key), "must be a number");
    value = (*rope)[key].get<double>();
    if (!std::isfinite(value)) r.fail_field(fmt::format("{}.{}", field, key), "must be finite");
  };
  number("factor", y.factor);
  number("beta_fast", y.beta_fast);
  number("beta_slow", y.beta_slow);
  number("mscale", y.mscale);
  number("mscale_all_dim", y.mscale_all_dim);
  if (rope->contains("original_max_position_embeddings")) {
    const json& v = (*rope)["original_max_position_embeddings"];
    if (!v.is_number_integer() || v.get<std::int64_t>() <= 0 ||
        v.get<std::int64_t>() > std::int64_t{1} << 24)
      r.fail_field(fmt::format("{}.original_max_position_embeddings", field),
                   "must be a positive integer of at most 2^24");
    y.original_max_position_embeddings = v.get<std::int64_t>();
  }
  if (!(y.factor >= 1.0))
    r.fail_field(fmt::format("{}.factor", field), fmt::format("must be >= 1, got {}", y.factor));
  c.yarn = y;
}

void read_quantization(field_reader& r, model_config& c) {
  const json* q = r.find_optional("quantization_config");
  if (q == nullptr || q->is_null()) return;
  if (!q->is_object()) r.fail_field("quantization_config", "must be an object or null");
  std::string method = r.member_string(*q, "quantization_config", "quant_method", "");
  if (method != "fp8")
    r.fail_field(
        "quantization_config.quant_method",
        fmt::format("\"{}\" is not supported: troupe reads fp8 (block-scaled E4M3) checkpoints",
                    method));
  std::string format = r.member_string(*q, "quantization_config", "fmt", "e4m3");
  if (format != "e4m3")
    r.fail_field("quantization_config.fmt",
                 fmt::format("\"{}\" is not supported: only e4m3", format));
  fp8_quantization_config f;
  if (q->contains("weight_block_size")) {
    const json& block = (*q)["weight_block_size"];
    if (!block.is_array() || block.size() != 2 || !block[0].is_number_integer() ||
        !block[1].is_number_integer())
      r.fail_field("quantization_config.weight_block_size", "must be [rows, cols]");
    f.block_rows = block[0].get<std::int64_t>();
    f.block_cols = block[1].get<std::int64_t>();
    if (f.block_rows != 128 || f.block_cols != 128)
      r.fail_field("quantization_config.weight_block_size",
                   fmt::format("[{}, {}] is not supported: DeepSeek-V3 checkpoints use [128, 128]",
                               f.block_rows, f.block_cols));
  }
  f.activation_scheme = r.member_string(*q, "quantization_config", "activation_scheme", "dynamic");
  if (f.activation_scheme != "dynamic")
    r.fail_field("quantization_config.activation_scheme",
                 fmt::format("\"{}\" is not supported: only dynamic", f.activation_scheme));
  c.quantization = f;
}

}  // namespace

model_config_error::model_config_error(source_position where, std::string field,
                                       std::string problem)
    : error(fmt::format("{}: model config field '{}': {}", to_string(where), field, problem)),
      where_(std::move(where)),
      field_(std::move(field)),
      problem_(std::move(problem)) {}

std::int64_t model_config::moe_layer_count() const {
  std::int64_t count = 0;
  for (std::int64_t layer = 0; layer < num_hidden_layers; ++layer)
    count += is_moe_layer(layer) ? 1 : 0;
  return count;
}

namespace {

/// The parameter counts of the model's pieces.
struct piece_sizes {
  std::int64_t attention = 0, dense_ffn = 0, moe_ffn = 0, norms = 0, embedding = 0, mtp = 0;
};

piece_sizes pieces_of(const model_config& c) {
  const std::int64_t h = c.hidden_size, heads = c.num_attention_heads;
  piece_sizes p;
  if (c.q_lora_rank)
    p.attention += h * *c.q_lora_rank + *c.q_lora_rank + *c.q_lora_rank * heads * c.qk_head_dim();
  else
    p.attention += h * heads * c.qk_head_dim();
  p.attention += h * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank;
  p.attention += c.kv_lora_rank * heads * (c.qk_nope_head_dim + c.v_head_dim);
  p.attention += heads * c.v_head_dim * h;
  p.dense_ffn = 3 * h * c.intermediate_size;
  const std::int64_t expert = 3 * h * c.moe_intermediate_size;
  p.moe_ffn = (c.n_routed_experts + c.n_shared_experts) * expert + c.n_routed_experts * h +
              c.n_routed_experts;
  p.norms = 2 * h;
  p.embedding = c.vocab_size * h;
  // Each MTP module: two norms, the projection, one (MoE) block and a final norm.
  p.mtp = 2 * h + 2 * h * h + p.attention + p.norms +
          (c.n_routed_experts > 0 ? p.moe_ffn : p.dense_ffn) + h;
  return p;
}

}  // namespace

std::int64_t model_config::stage_parameter_count(const std::vector<int>& layers) const {
  const piece_sizes p = pieces_of(*this);
  const bool embedding = std::find(layers.begin(), layers.end(), 0) != layers.end();
  std::int64_t total = embedding ? p.embedding : 0;
  for (int layer : layers) {
    total += p.attention + p.norms + (is_moe_layer(layer) ? p.moe_ffn : p.dense_ffn);
    if (layer == num_hidden_layers - 1)  // the final norm, the head (unless it is the
      total += hidden_size + (tie_word_embeddings && embedding ? 0 : p.embedding) +  // embedding)
               num_nextn_predict_layers * p.mtp;  // and the MTP modules
  }
  return total;
}

std::int64_t model_config::stage_routed_expert_parameter_count(
    const std::vector<int>& layers) const {
  const std::int64_t experts = n_routed_experts * 3 * hidden_size * moe_intermediate_size;
  std::int64_t total = 0;
  for (int layer : layers) {
    if (is_moe_layer(layer)) total += experts;
    if (layer == num_hidden_layers - 1 && n_routed_experts > 0)
      total += num_nextn_predict_layers * experts;
  }
  return total;
}

std::int64_t model_config::parameter_count() const {
  std::vector<int> layers(static_cast<std::size_t>(num_hidden_layers));
  for (std::size_t i = 0; i < layers.size(); ++i) layers[i] = static_cast<int>(i);
  return stage_parameter_count(layers);
}

model_config parse_model_config(const json& source, const std::string& source_name,
                                field_locator locate, const void* locate_context) {
  if (!source.is_object()) fail("{}: a model config must be a JSON object", source_name);
  model_config c;
  field_reader r(source, source_name, locate, locate_context, c);
  r.integer("vocab_size", c.vocab_size, 1);
  r.integer("hidden_size", c.hidden_size, 1);
  r.integer("intermediate_size", c.intermediate_size, 1);
  r.integer("moe_intermediate_size", c.moe_intermediate_size, 1);
  r.integer("num_hidden_layers", c.num_hidden_layers, 1, 4096);
  r.integer("first_k_dense_replace", c.first_k_dense_replace, 0, 4096);
  r.integer("num_attention_heads", c.num_attention_heads, 1, 65536);
  if (const json* q = r.find("q_lora_rank")) {
    if (q->is_null())
      c.q_lora_rank.reset();
    else if (q->is_number_integer() && q->get<std::int64_t>() > 0 &&
             q->get<std::int64_t>() <= std::int64_t{1} << 24)
      c.q_lora_rank = q->get<std::int64_t>();
    else
      r.fail_field("q_lora_rank",
                   fmt::format("must be a positive integer or null, got {}", q->dump()));
  }
  r.integer("kv_lora_rank", c.kv_lora_rank, 1);
  r.integer("qk_nope_head_dim", c.qk_nope_head_dim, 0);
  r.integer("qk_rope_head_dim", c.qk_rope_head_dim, 2);
  if (c.qk_rope_head_dim % 2 != 0)
    r.fail_field("qk_rope_head_dim",
                 fmt::format("must be even (RoPE rotates pairs), got {}", c.qk_rope_head_dim));
  r.integer("v_head_dim", c.v_head_dim, 1);
  r.integer("n_routed_experts", c.n_routed_experts, 0, 65536);
  r.integer("n_shared_experts", c.n_shared_experts, 0, 65536);
  r.integer("num_experts_per_tok", c.num_experts_per_tok, 1, 65536);
  r.integer("n_group", c.n_group, 1, 65536);
  r.integer("topk_group", c.topk_group, 1, 65536);
  r.number("routed_scaling_factor", c.routed_scaling_factor, true);
  r.boolean("norm_topk_prob", c.norm_topk_prob);
  r.choice("scoring_func", c.scoring_func, {"sigmoid"},
           "DeepSeek-V3 routes with sigmoid affinities (softmax is DeepSeek-V2's)");
  r.choice("topk_method", c.topk_method, {"noaux_tc"},
           "DeepSeek-V3's auxiliary-loss-free, group-limited routing is \"noaux_tc\"");
  r.choice("hidden_act", c.hidden_act, {"silu"}, "the SwiGLU experts use silu");
  r.number("rope_theta", c.rope_theta, true);
  read_rope(r, source, c);
  r.boolean("rope_interleave", c.rope_interleave);
  r.number("rms_norm_eps", c.rms_norm_eps, true);
  r.integer("max_position_embeddings", c.max_position_embeddings, 1);
  r.integer("num_nextn_predict_layers", c.num_nextn_predict_layers, 0, 64);
  r.boolean("tie_word_embeddings", c.tie_word_embeddings);
  read_quantization(r, c);
  r.integer("bos_token_id", c.bos_token_id, 0, c.vocab_size - 1);
  r.integer("eos_token_id", c.eos_token_id, 0, c.vocab_size - 1);

  if (c.first_k_dense_replace > c.num_hidden_layers)
    r.fail_field("first_k_dense_replace",
                 fmt::format("{} is more than num_hidden_layers = {}", c.first_k_dense_replace,
                             c.num_hidden_layers));
  if (c.n_routed_experts > 0) {
    if (c.n_routed_experts % c.n_group != 0)
      r.fail_field("n_group", fmt::format("{} groups do not divide n_routed_experts = {}",
                                          c.n_group, c.n_routed_experts));
    if (c.topk_group > c.n_group)
      r.fail_field("topk_group",
                   fmt::format("{} is more than n_group = {}", c.topk_group, c.n_group));
    const std::int64_t per_group = c.n_routed_experts / c.n_group;
    if (per_group < 2)
      r.fail_field("n_group",
                   fmt::format("each group needs at least 2 experts (group score = sum of the "
                               "top-2), got {} per group",
                               per_group));
    if (c.num_experts_per_tok > c.topk_group * per_group)
      r.fail_field("num_experts_per_tok",
                   fmt::format("{} is more than the {} experts in topk_group = {} groups",
                               c.num_experts_per_tok, c.topk_group * per_group, c.topk_group));
  }
  c.json_text = source.dump();
  return c;
}

std::string complete_json(const model_config& c) {
  json j = {{"architectures", {"DeepseekV3ForCausalLM"}},
            {"model_type", "deepseek_v3"},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.hidden_size},
            {"intermediate_size", c.intermediate_size},
            {"moe_intermediate_size", c.moe_intermediate_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"first_k_dense_replace", c.first_k_dense_replace},
            {"num_attention_heads", c.num_attention_heads},
            {"q_lora_rank", c.q_lora_rank ? json(*c.q_lora_rank) : json(nullptr)},
            {"kv_lora_rank", c.kv_lora_rank},
            {"qk_nope_head_dim", c.qk_nope_head_dim},
            {"qk_rope_head_dim", c.qk_rope_head_dim},
            {"v_head_dim", c.v_head_dim},
            {"n_routed_experts", c.n_routed_experts},
            {"n_shared_experts", c.n_shared_experts},
            {"num_experts_per_tok", c.num_experts_per_tok},
            {"n_group", c.n_group},
            {"topk_group", c.topk_group},
            {"routed_scaling_factor", c.routed_scaling_factor},
            {"norm_topk_prob", c.norm_topk_prob},
            {"scoring_func", c.scoring_func},
            {"topk_method", c.topk_method},
            {"hidden_act", c.hidden_act},
            {"rope_theta", c.rope_theta},
            {"rope_scaling", nullptr},
            {"rope_interleave", c.rope_interleave},
            {"rms_norm_eps", c.rms_norm_eps},
            {"max_position_embeddings", c.max_position_embeddings},
            {"num_nextn_predict_layers", c.num_nextn_predict_layers},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"quantization_config", nullptr},
            {"bos_token_id", c.bos_token_id},
            {"eos_token_id", c.eos_token_id}};
  if (c.yarn)
    j["rope_scaling"] = {
        {"type", "yarn"},
        {"factor", c.yarn->factor},
        {"original_max_position_embeddings", c.yarn->original_max_position_embeddings},
        {"beta_fast", c.yarn->beta_fast},
        {"beta_slow", c.yarn->beta_slow},
        {"mscale", c.yarn->mscale},
        {"mscale_all_dim", c.yarn->mscale_all_dim}};
  if (c.quantization)
    j["quantization_config"] = {
        {"quant_method", "fp8"},
        {"fmt", "e4m3"},
        {"activation_scheme", c.quantization->activation_scheme},
        {"weight_block_size", {c.quantization->block_rows, c.quantization->block_cols}}};
  return j.dump();
}

namespace {

struct file_text {
  std::string name;
  std::string text;
};

/// The line and column of the first mention of "field" (the part before any '.').
source_position locate_in_json_text(const void* context, const std::string& field) {
  const auto* file = static_cast<const file_text*>(context);
  const std::string key = "\"" + field.substr(0, field.find('.')) + "\"";
  const auto at = file->text.find(key);
  if (at == std::string::npos) return {file->name};
  const auto before = std::string_view(file->text).substr(0, at);
  const auto line = 1 + std::count(before.begin(), before.end(), '\n');
  const auto line_start = before.rfind('\n');
  const auto column = line_start == std::string_view::npos ? at + 1 : at - line_start;
  return {file->name, static_cast<int>(line), static_cast<int>(column)};
}

}  // namespace

model_config load_model_config(const std::filesystem::path& file) {
  file_text source{file.string(), read_text_file(file, "model config")};
  const json parsed = parse_json(source.text, source.name);
  return parse_model_config(parsed, source.name, &locate_in_json_text, &source);
}

}  // namespace troupe
