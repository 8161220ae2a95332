#pragma once

// A model for inference over MLA's latent cache: the parameters and plugins of a whole-model
// model_runner, run for the new tokens of several sequences at once. Prefill and decode are the
// same call: a sequence's new tokens are its prompt (or a chunk of it), one token, or a token and
// the drafts that speculative decoding verifies. Every decoder layer's attention plugin writes
// the new tokens' latents into its layer of the cache and attends over the sequence's whole
// cache at the tokens' real positions; nothing is kept for backward.
//
// The MTP modules use the cache too: module d's block is cache layer num_hidden_layers + d - 1,
// fed at position i with the main model's hidden state at i and the embedding of token i + 1.

#include <cstdint>
#include <map>
#include <span>

#include "runtime/exec/exec_context.hpp"
#include "runtime/inference/latent_cache.hpp"
#include "runtime/model/model_runner.hpp"

namespace troupe {

/// The latent cache a model of `config` needs with `mtp_depth` MTP modules: one layer per
/// decoder layer and module, kv_lora_rank + qk_rope_head_dim values per token and layer.
latent_cache_shape inference_cache_shape(const model_config& config, std::int64_t mtp_depth,
                                         dtype type, std::int64_t block_tokens);

class cached_model {
 public:
  /// Throws troupe::error unless `runner` holds the whole model (embedding to head) and its
  /// attention plugin computes over a cache (ABI 1.2 forward_cached).
  explicit cached_model(model_runner& runner);

  const model_config& config() const { return runner_->config(); }
  /// MTP modules the model has (each can draft one token further ahead).
  std::int64_t mtp_depth() const { return runner_->mtp_depth(); }

  /// The cache this model needs: one layer per decoder layer and per MTP module.
  latent_cache_shape cache_shape(dtype type, std::int64_t block_tokens) const;

  /// The last decoder layer's output [1, rows, hidden] (before the final norm) for `tokens`: the
  /// step's new tokens, sequence after sequence. Writes their latents into the cache; the caller
  /// commits the step.
  tensor forward(const exec_context& context, const cache_step& step,
                 std::span<const std::int32_t> tokens);

  /// MTP module `depth` (1-based) on the step's rows: previous [1, rows, hidden] is the hidden
  /// state of the depth before (the main model's for depth 1) at each row's position and
  /// `next_tokens` the token after it. Returns the module's block output [1, rows, hidden].
  tensor mtp_forward(const exec_context& context, std::int64_t depth, const cache_step& step,
                     const tensor& previous, std::span<const std::int32_t> next_tokens);

  /// Logits [rows.size(), vocab] on the host for rows `rows` of `hidden`: through the final norm
  /// (depth 0) or MTP module depth's norm, then the shared output head.
  tensor logits(const exec_context& context, const tensor& hidden,
                std::span<const std::int64_t> rows, std::int64_t depth = 0);

  /// Adds the tokens each MoE layer of the main model routed to each expert in the last
  /// forward() to `load` (layer index -> [n_routed_experts]); copies from the device on a GPU.
  void add_expert_load(std::map<std::int64_t, std::vector<std::int64_t>>& load) const;

 private:
  void check_context(const exec_context& context) const;
  /// tokens [1, count] in host memory, each checked against the vocabulary.
  tensor token_tensor(std::span<const std::int32_t> tokens) const;
  tensor embed(const exec_context& context, std::span<const std::int32_t> tokens) const;

  model_runner* runner_;
  device where_;
};

}  // namespace troupe
