#pragma once

// One decoder layer of DeepSeek-V3, as the runtime composes it:
//   h_mid = h + attention(input_layernorm(h))
//   h_out = h_mid + ffn(post_attention_layernorm(h_mid))
// The attention is the attention plugin; the ffn is the moe plugin on MoE layers and the core
// dense SwiGLU block on the first first_k_dense_replace layers. The multi-token-prediction
// modules use the same layer as their transformer block.
//
// With an expert backend (expert parallelism), a MoE layer runs the moe plugin's routing part
// here (router and shared experts), sends the token rows to the backend, and combines what comes
// back exactly as the whole plugin does (kernels/cpu/expert_combine.hpp).

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "kernels/cpu/expert_combine.hpp"
#include "runtime/layers/dense_ffn.hpp"
#include "runtime/model/expert_backend.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/model/parameter_store.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/plugin/instance_swap.hpp"

namespace troupe {

/// The plugin libraries a model uses, and the options each role gets.
struct model_plugins {
  std::shared_ptr<const plugin_library> attention;
  std::shared_ptr<const plugin_library> moe;
  std::shared_ptr<const plugin_library> mtp;
  std::string attention_options = "{}";
  std::string moe_options = "{}";
  /// Where the routed experts run; null: in the stage, by the moe plugin's whole layers.
  expert_backend* experts = nullptr;
};

class decoder_layer {
 public:
  /// Declares the layer's parameters in `store` under "model.layers.<index>.".
  decoder_layer(std::int64_t index, bool moe, const model_config& config,
                const model_plugins& plugins, parameter_store& store);

  /// Binds the plugins to the store's tensors (after the store holds its final values' storage).
  void bind(parameter_store& store);

  /// h_out for micro-batch `micro_batch`; h_in must stay valid until its backward.
  tensor forward(const exec_context& context, std::int64_t micro_batch, const tensor& h_in);

  /// The input part returns dL/dh_in; the weight part returns an undefined tensor. `loss_scale`
  /// weights this layer's balance loss as the total loss does.
  tensor backward(const exec_context& context, std::int64_t micro_batch, troupe_backward_part part,
                  const tensor& dh_out, float loss_scale);

  void forget(std::int64_t micro_batch);

  /// Inference: h_out [1, rows, hidden] for new tokens of the sequences `cache` describes (this
  /// layer's view of the latent cache, which the attention plugin extends); nothing is kept.
  tensor forward_cached(const exec_context& context, const troupe_kv_cache& cache,
                        const tensor& h_in);

  std::int64_t index() const { return index_; }
  bool is_moe() const { return moe_ != nullptr; }
  /// Per-expert routed counts and the balance loss of a forwarded micro-batch (MoE layers).
  const tensor& expert_counts(std::int64_t micro_batch) const;
  double balance_loss(std::int64_t micro_batch) const;
  /// Per-expert routed counts (i64 [n_routed_experts], on the layer's device) of the last
  /// forward_cached; undefined for a dense layer or before one.
  const tensor& cached_expert_counts() const { return cached_counts_; }

  layer_instance& attention() { return *attention_; }
  layer_instance* moe() { return moe_.get(); }
  /// The layer's instances of plugins of `kind` (attention, moe), for a hot swap.
  std::vector<instance_slot> plugin_slots(plugin_kind kind);

 private:
  struct saved {
    tensor h_in, a_in, h_mid, m_in;
    tensor rstd_in, rstd_post;
    tensor counts, balance;
    // Expert parallelism: the routing decision, its grouping and the experts' outputs.
    tensor gates, expert_out;
    kernels::cpu::expert_grouping grouping;
  };
  /// The ffn branch of a MoE layer whose routed experts run on the expert backend.
  tensor sharded_moe_forward(const exec_context& context, std::int64_t micro_batch, saved& s);
  tensor sharded_moe_backward_input(const exec_context& context, std::int64_t micro_batch, saved& s,
                                    const tensor& dh_out, float loss_scale);
  const saved& saved_for(std::int64_t micro_batch) const;

  std::int64_t index_;
  std::string prefix_;
  std::int64_t hidden_;
  float eps_;
  std::unique_ptr<layer_instance> attention_, moe_;
  expert_backend* experts_ = nullptr;
  std::int64_t routed_experts_ = 0, topk_ = 0;
  std::vector<std::string> attention_names_, moe_names_;
  std::optional<dense_ffn> dense_;
  dense_ffn_weights dense_weights_;
  const float *input_norm_ = nullptr, *post_norm_ = nullptr;
  float *d_input_norm_ = nullptr, *d_post_norm_ = nullptr;
  std::map<std::int64_t, saved> saved_;
  tensor cached_counts_;
};

/// Declares the parameters of a plugin instance of model layer `layer` in `store`, under the
/// layer's checkpoint prefix ("model.layers.3."); returns their full names.
std::vector<std::string> declare_parameters(layer_instance& instance, std::int64_t layer,
                                            parameter_store& store);

}  // namespace troupe
