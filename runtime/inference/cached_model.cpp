#include "runtime/inference/cached_model.hpp"

#include <limits>
#include <vector>

#include "kernels/dispatch/device_ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/layers/embedding.hpp"
#include "runtime/layers/norm.hpp"
#include "runtime/layers/output_head.hpp"

namespace troupe {

namespace {

const char* const embedding_name = "model.embed_tokens.weight";

}  // namespace

cached_model::cached_model(model_runner& runner)
    : runner_(&runner), where_(runner.parameters().at(embedding_name).value.where()) {
  const model_slice& slice = runner.slice();
  if (!slice.embedding || !slice.head || slice.first_layer != 0 ||
      (slice.end_layer != -1 && slice.end_layer != runner.config().num_hidden_layers))
    fail("cached inference needs the whole model (embedding to head) in one runner");
  for (decoder_layer* layer : runner.layers())
    if (!layer->attention().computes_cached())
      fail(
          "the attention plugin '{}' ({}) of layer {} has no cached forward (plugin ABI 1.2 "
          "forward_cached); it cannot decode over a KV cache",
          layer->attention().library().name, layer->attention().library().file.string(),
          layer->index());
}

latent_cache_shape inference_cache_shape(const model_config& config, std::int64_t mtp_depth,
                                         dtype type, std::int64_t block_tokens) {
  latent_cache_shape shape;
  shape.layers = config.num_hidden_layers + mtp_depth;
  shape.kv_lora_rank = config.kv_lora_rank;
  shape.rope_dim = config.qk_rope_head_dim;
  shape.type = type;
  shape.block_tokens = block_tokens;
  return shape;
}

latent_cache_shape cached_model::cache_shape(dtype type, std::int64_t block_tokens) const {
  return inference_cache_shape(config(), mtp_depth(), type, block_tokens);
}

void cached_model::add_expert_load(std::map<std::int64_t, std::vector<std::int64_t>>& load) const {
  for (const decoder_layer* layer : runner_->layers()) {
    if (!layer->is_moe() || layer->index() >= config().num_hidden_layers) continue;
    const tensor& counts = layer->cached_expert_counts();
    if (!counts.defined()) continue;
    const tensor host = counts.where().is_cpu() ? counts : counts.to(device::cpu());
    std::vector<std::int64_t>& sums = load[layer->index()];
    sums.resize(static_cast<std::size_t>(host.numel()), 0);
    for (std::int64_t e = 0; e < host.numel(); ++e)
      sums[static_cast<std::size_t>(e)] += host.data_as<std::int64_t>()[e];
  }
}

void cached_model::check_context(const exec_context& context) const {
  if (context.where() != where_)
    fail("the model's parameters are on {}, but the call computes on {}", to_string(where_),
         to_string(context.where()));
}

tensor cached_model::token_tensor(std::span<const std::int32_t> tokens) const {
  const std::int64_t vocab = config().vocab_size;
  tensor host = tensor::empty(dtype::i32, {1, static_cast<std::int64_t>(tokens.size())});
  auto* out = host.data_as<std::int32_t>();
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab)
      fail("token {} (at {}) is outside the model's vocabulary of {}", tokens[i], i, vocab);
    out[i] = tokens[i];
  }
  return host;  // embedding_forward takes host ids and uploads them itself on a GPU
}

tensor cached_model::embed(const exec_context& context,
                           std::span<const std::int32_t> tokens) const {
  const std::int64_t h = config().hidden_size, count = static_cast<std::int64_t>(tokens.size());
  const tensor ids = token_tensor(tokens);
  tensor out = tensor::empty(dtype::f32, {1, count, h}, context.where());
  embedding_forward(context, runner_->parameters().at(embedding_name).value.data_as<float>(),
                    config().vocab_size, h, ids.data_as<std::int32_t>(), count,
                    out.data_as<float>());
  return out;
}

tensor cached_model::forward(const exec_context& context, const cache_step& step,
                             std::span<const std::int32_t> tokens) {
  check_context(context);
  if (static_cast<std::int64_t>(tokens.size()) != step.rows())
    fail("{} tokens for a cache step of {} new tokens", tokens.size(), step.rows());
  const context_stream_scope on_stream(context);
  tensor hidden = embed(context, tokens);
  for (decoder_layer* layer : runner_->layers())  // the MTP modules' blocks come last
    if (layer->index() < config().num_hidden_layers)
      hidden = layer->forward_cached(context, step.layer(layer->index()), hidden);
  return hidden;
}

tensor cached_model::mtp_forward(const exec_context& context, std::int64_t depth,
                                 const cache_step& step, const tensor& previous,
                                 std::span<const std::int32_t> next_tokens) {
  // NOTES: the combining plugin keeps what its backward would need under a micro-batch id that
  // training never uses; it is forgotten at once.
  constexpr std::int64_t inference = std::numeric_limits<std::int64_t>::max();
  check_context(context);
  if (static_cast<std::int64_t>(next_tokens.size()) != step.rows() ||
      previous.numel() != step.rows() * config().hidden_size)
    fail("MTP depth {}: {} next tokens and {} hidden values for a cache step of {} rows", depth,
         next_tokens.size(), previous.numel(), step.rows());
  const context_stream_scope on_stream(context);
  const model_runner::mtp_parts module = runner_->mtp(depth);
  const tensor embedded = embed(context, next_tokens);
  const tensor combined =
      module.combine.forward(context, inference, std::vector<tensor>{previous, embedded})[0];
  module.combine.forget(inference);
  return module.block.forward_cached(context, step.layer(config().num_hidden_layers + depth - 1),
                                     combined);
}

tensor cached_model::logits(const exec_context& context, const tensor& hidden,
                            std::span<const std::int64_t> rows, std::int64_t depth) {
  check_context(context);
  const model_config& c = config();
  const std::int64_t h = c.hidden_size, count = static_cast<std::int64_t>(rows.size());
  const std::int64_t available = hidden.numel() / h;
  const context_stream_scope on_stream(context);
  tensor picked = tensor::empty(dtype::f32, {count, h}, context.where());
  for (std::int64_t i = 0; i < count; ++i) {
    if (rows[static_cast<std::size_t>(i)] < 0 || rows[static_cast<std::size_t>(i)] >= available)
      fail("logits of row {} requested; the hidden states have {} rows",
           rows[static_cast<std::size_t>(i)], available);
    kernels::ops::copy_2d(context.abi(), picked.data_as<float>() + i * h, h,
                          hidden.data_as<float>() + rows[static_cast<std::size_t>(i)] * h, h, 1, h);
  }
  const std::string norm =
      depth == 0 ? std::string("model.norm.weight") : std::string(runner_->mtp(depth).norm_name);
  parameter_store& store = runner_->parameters();
  tensor normed = tensor::empty(dtype::f32, {count, h}, context.where());
  tensor rstd = tensor::empty(dtype::f32, {count}, context.where());
  rmsnorm_forward(context, picked.data_as<float>(), store.at(norm).value.data_as<float>(),
                  normed.data_as<float>(), rstd.data_as<float>(), count, h,
                  static_cast<float>(c.rms_norm_eps));
  const float* head =
      store.at(c.tie_word_embeddings ? embedding_name : "lm_head.weight").value.data_as<float>();
  tensor out = tensor::empty(dtype::f32, {count, c.vocab_size}, context.where());
  output_head_forward(context, normed.data_as<float>(), head, out.data_as<float>(), nullptr, count,
                      h, c.vocab_size);
  return context.where().is_cpu() ? out : out.to(device::cpu());
}

}  // namespace troupe
