// Hugging Face DeepseekV3 config.json parsing: every field, both rope spellings, defaults, and
// an error naming the field for each unsupported value.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "plugins/common/model_shape.hpp"
#include "runtime/model/model_config.hpp"

namespace {

using nlohmann::json;
using troupe::model_config_error;
using troupe::parse_model_config;

json tiny() {
  return json::parse(R"({
    "vocab_size": 272, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
    "num_hidden_layers": 4, "first_k_dense_replace": 1, "num_attention_heads": 4,
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
    "v_head_dim": 16, "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4,
    "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "norm_topk_prob": true,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu",
    "rope_theta": 10000.0, "rope_scaling": null, "rms_norm_eps": 1e-6,
    "max_position_embeddings": 256, "num_nextn_predict_layers": 1, "tie_word_embeddings": false,
    "rope_interleave": true, "bos_token_id": 256, "eos_token_id": 257})");
}

std::string error_of(const json& config) {
  try {
    parse_model_config(config, "config.json");
  } catch (const model_config_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an error for " << config.dump();
  return "";
}

TEST(ModelConfig, ReadsEveryField) {
  auto c = parse_model_config(tiny(), "config.json");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.q_lora_rank, 32);
  EXPECT_EQ(c.qk_head_dim(), 24);
  EXPECT_EQ(c.moe_layer_count(), 3);
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.bos_token_id, 256);
  EXPECT_EQ(c.eos_token_id, 257);
  EXPECT_FALSE(c.yarn.has_value());
  EXPECT_FALSE(c.quantization.has_value());
  EXPECT_TRUE(c.defaulted.empty()) << c.defaulted.front();
  EXPECT_EQ(json::parse(c.json_text), tiny());
}

TEST(ModelConfig, MissingFieldsTakeTransformersDefaultsAndAreListed) {
  auto source = tiny();
  source.erase("routed_scaling_factor");
  source.erase("rms_norm_eps");
  auto c = parse_model_config(source, "config.json");
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.defaulted, (std::vector<std::string>{"routed_scaling_factor", "rms_norm_eps"}));
}

TEST(ModelConfig, PlainQProjectionWhenQLoraRankIsNull) {
  auto source = tiny();
  source["q_lora_rank"] = nullptr;
  EXPECT_FALSE(parse_model_config(source, "c").q_lora_rank.has_value());
}

TEST(ModelConfig, YarnInBothSpellings) {
  auto old_style = tiny();
  old_style["rope_scaling"] = {
      {"type", "yarn"},       {"factor", 40.0}, {"original_max_position_embeddings", 4096},
      {"beta_fast", 32},      {"beta_slow", 1}, {"mscale", 1.0},
      {"mscale_all_dim", 1.0}};
  auto c = parse_model_config(old_style, "c");
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_DOUBLE_EQ(c.yarn->factor, 40.0);
  EXPECT_EQ(c.yarn->original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.yarn->mscale_all_dim, 1.0);

  auto new_style = tiny();
  new_style.erase("rope_scaling");
  new_style.erase("rope_theta");
  new_style["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 50000.0}, {"factor", 4.0}};
  auto n = parse_model_config(new_style, "c");
  ASSERT_TRUE(n.yarn.has_value());
  EXPECT_DOUBLE_EQ(n.rope_theta, 50000.0);
  EXPECT_DOUBLE_EQ(n.yarn->factor, 4.0);

  auto plain = tiny();
  plain["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 20000.0}};
  auto p = parse_model_config(plain, "c");
  EXPECT_FALSE(p.yarn.has_value());
  EXPECT_DOUBLE_EQ(p.rope_theta, 20000.0);
}

TEST(ModelConfig, Fp8QuantizationConfig) {
  auto source = tiny();
  source["quantization_config"] = {{"quant_method", "fp8"},
                                   {"fmt", "e4m3"},
                                   {"activation_scheme", "dynamic"},
                                   {"weight_block_size", {128, 128}}};
  auto c = parse_model_config(source, "c");
  ASSERT_TRUE(c.quantization.has_value());
  EXPECT_EQ(c.quantization->block_rows, 128);
}

TEST(ModelConfig, UnsupportedValuesNameTheField) {
  auto expect = [](json config, const std::string& part) {
    auto message = error_of(config);
    EXPECT_NE(message.find(part), std::string::npos) << message;
  };
  auto with = [](const char* field, json value) {
    auto c = tiny();
    c[field] = std::move(value);
    return c;
  };
  expect(with("scoring_func", "softmax"), "field 'scoring_func': \"softmax\" is not supported");
  expect(with("topk_method", "greedy"), "field 'topk_method'");
  expect(with("hidden_act", "gelu"), "field 'hidden_act'");
  expect(with("hidden_size", "64"), "field 'hidden_size': must be an integer");
  expect(with("hidden_size", 0), "field 'hidden_size': must be at least 1");
  expect(with("n_group", 3), "field 'n_group': 3 groups do not divide n_routed_experts = 16");
  expect(with("n_group", 16), "each group needs at least 2 experts");
  expect(with("topk_group", 5), "field 'topk_group': 5 is more than n_group = 4");
  expect(with("num_experts_per_tok", 9),
         "field 'num_experts_per_tok': 9 is more than the 8 experts");
  expect(with("qk_rope_head_dim", 7), "field 'qk_rope_head_dim': must be even");
  expect(with("first_k_dense_replace", 5), "field 'first_k_dense_replace'");
  expect(with("q_lora_rank", -1), "field 'q_lora_rank'");
  expect(with("norm_topk_prob", 1), "field 'norm_topk_prob': must be true or false");
  expect(with("rope_scaling", json{{"type", "linear"}, {"factor", 2.0}}),
         "field 'rope_scaling.rope_type': \"linear\"");
  expect(with("rope_scaling", json{{"type", "yarn"}, {"factor", 0.5}}),
         "field 'rope_scaling.factor'");
  expect(with("quantization_config", json{{"quant_method", "awq"}}),
         "field 'quantization_config.quant_method'");
  expect(
      with("quantization_config", json{{"quant_method", "fp8"}, {"weight_block_size", {64, 64}}}),
      "field 'quantization_config.weight_block_size': [64, 64] is not supported");
  EXPECT_THROW(parse_model_config(json::array(), "c"), troupe::error);
  // A nested field of the wrong JSON type (found by fuzzing: it escaped as a nlohmann
  // type_error and aborted).
  expect(with("quantization_config", json{{"quant_method", "fp8"}, {"fmt", {256, 128}}}),
         "field 'quantization_config.fmt': must be a string, got [256,128]");
  expect(with("quantization_config", json{{"quant_method", 8}}),
         "field 'quantization_config.quant_method': must be a string, got 8");
  expect(with("quantization_config", json{{"quant_method", "fp8"}, {"activation_scheme", false}}),
         "field 'quantization_config.activation_scheme': must be a string");
  expect(with("rope_scaling", json{{"type", 5}}), "field 'rope_scaling.type': must be a string");
}

// Plugins get the config with every field written out (ABI 1.1) and read it without a parser or
// defaults of their own: it parses back to the same config, and the plugins' reader finds what
// the runtime has.
TEST(ModelConfig, TheCompleteConfigPluginsGetRoundTripsAndTheirReaderAgrees) {
  json yarn = tiny();
  yarn["rope_scaling"] = {
      {"type", "yarn"},       {"factor", 40},   {"original_max_position_embeddings", 64},
      {"beta_fast", 32},      {"beta_slow", 1}, {"mscale", 1.0},
      {"mscale_all_dim", 1.0}};
  yarn["q_lora_rank"] = nullptr;
  yarn["quantization_config"] = {{"quant_method", "fp8"},
                                 {"fmt", "e4m3"},
                                 {"activation_scheme", "dynamic"},
                                 {"weight_block_size", {128, 128}}};
  json sparse = tiny();
  for (const char* field : {"n_group", "topk_group", "rope_theta", "rms_norm_eps"})
    sparse.erase(field);  // transformers' defaults fill them
  for (const json& source : {tiny(), yarn, sparse}) {
    const auto c = parse_model_config(source, "config.json");
    const std::string complete = troupe::complete_json(c);
    const auto again = parse_model_config(json::parse(complete), "complete");
    EXPECT_TRUE(again.defaulted.empty()) << "every field is written out: " << complete;
    EXPECT_EQ(troupe::complete_json(again), complete);
    const auto shape = troupe::plugin::read_model_shape(complete);
    EXPECT_EQ(shape.hidden_size, c.hidden_size);
    EXPECT_EQ(shape.q_lora_rank, c.q_lora_rank);
    EXPECT_EQ(shape.qk_head_dim(), c.qk_head_dim());
    EXPECT_EQ(shape.n_group, c.n_group);
    EXPECT_EQ(shape.topk_group, c.topk_group);
    EXPECT_EQ(shape.rope_theta, c.rope_theta);
    EXPECT_EQ(shape.rms_norm_eps, c.rms_norm_eps);
    EXPECT_EQ(shape.yarn.has_value(), c.yarn.has_value());
    if (c.yarn) {
      EXPECT_EQ(shape.yarn->factor, c.yarn->factor);
      EXPECT_EQ(shape.yarn->mscale_all_dim, c.yarn->mscale_all_dim);
      EXPECT_EQ(shape.yarn->original_max_position_embeddings,
                c.yarn->original_max_position_embeddings);
    }
  }
  // The plugins' reader names a field the runtime did not write (a config from elsewhere).
  try {
    troupe::plugin::read_model_shape(R"({"hidden_size": 8})");
    FAIL() << "a partial config must be refused";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("moe_intermediate_size"), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, LoadsAFileAndPointsAtTheLineOfABadField) {
  const char* source_dir = std::getenv("TROUPE_SOURCE_DIR");
  ASSERT_NE(source_dir, nullptr);
  auto c = troupe::load_model_config(std::filesystem::path(source_dir) /
                                     "topologies/models/small/config.json");
  EXPECT_EQ(c.num_hidden_layers, 16);
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_GT(c.parameter_count(), 100'000'000);
  EXPECT_THROW(troupe::load_model_config("/no/such/config.json"), troupe::error);
}

}  // namespace
