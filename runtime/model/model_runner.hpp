#pragma once

// A DeepSeek-V3 model, or the contiguous slice of it one pipeline stage holds, with forward and
// backward of micro-batches (several may be in flight). The first slice holds the embedding; the
// last holds the final norm, the output head and the multi-token-prediction modules.
//
// Losses, per micro-batch: the main cross-entropy (mean over labelled positions), the MTP loss
// lambda/D * sum_k CE_k, and the MoE layers' balance losses; backward differentiates their sum,
// times a loss scale (1/micro-batches for a step's mean).

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "runtime/model/decoder_layer.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/model/parameter_store.hpp"

namespace troupe {

struct head_loss;

/// Which part of the model a runner holds.
struct model_slice {
  std::int64_t first_layer = 0;
  std::int64_t end_layer = -1;  ///< one past the last layer; -1: num_hidden_layers
  bool embedding = true;        ///< the token embedding (first stage)
  bool head = true;             ///< final norm, output head and MTP modules (last stage)
};

struct model_options {
  double mtp_weight = 0.3;  ///< lambda
  bool mtp = true;          ///< build the MTP modules (inference of the main model does without)
  device where = device::cpu();  ///< where the parameters, gradients and activations live; calls
                                 ///< take an exec context on the same device
};

/// A micro-batch's input.
struct model_batch {
  tensor tokens;  ///< i32 [batch, length]: the embedding's input and the MTP modules' (needed by
                  ///< both ends)
  tensor
      targets;  ///< i32 [batch, length], target[i] = token[i+1], -1 unlabelled; undefined: no loss
  tensor hidden;  ///< f32 [batch, length, hidden]: the previous stage's output (when !embedding)
};

struct model_output {
  tensor hidden;                   ///< [batch, length, hidden] for the next stage (when !head)
  tensor logits;                   ///< [batch, length, vocab] (when head and keep_logits)
  std::vector<tensor> mtp_logits;  ///< per MTP depth (when head and keep_logits)
  double loss = 0.0;               ///< main cross-entropy, mean over labelled positions
  double mtp_loss = 0.0;           ///< lambda/D * sum of the depths' mean cross-entropies
  double balance_loss = 0.0;       ///< sum over this slice's MoE layers
  std::vector<std::int64_t> moe_layers;  ///< layer index of each entry below
  std::vector<tensor>
      expert_counts;  ///< i64 [n_routed_experts] per MoE layer (MTP blocks included)
  /// On a GPU: the bytes of device memory each decoder layer's forward left allocated (its
  /// output and what it keeps for backward), read from the memory pool's statistics around it;
  /// empty on the CPU.
  std::vector<std::uint64_t> layer_memory;
  /// Where this forward first went non-finite ("the output of model.layers.2"); empty if
  /// nowhere. Checked on each slice's output and losses; the layers are searched only then.
  std::string non_finite;
  double total() const { return loss + mtp_loss + balance_loss; }
};

class model_runner {
 public:
  model_runner(const model_config& config, model_slice slice, model_plugins plugins,
               model_options options = {});
  model_runner(const model_runner&) = delete;
  model_runner& operator=(const model_runner&) = delete;

  const model_config& config() const { return config_; }
  const model_slice& slice() const { return slice_; }
  parameter_store& parameters() { return store_; }

  /// Forward of a micro-batch, keeping what its backward needs. With `for_backward` false no
  /// backward is meant to follow (evaluation): what only the backward would use (the output
  /// head's gradient) is not computed; a backward still works, recomputing it.
  model_output forward(const exec_context& context, std::int64_t micro_batch,
                       const model_batch& batch, bool keep_logits = false,
                       bool for_backward = true);

  /// Backward of loss_scale * total loss. `d_hidden` is dL/d(output hidden) from the next stage
  /// (when !head). Returns dL/d(input hidden) when !embedding, else an undefined tensor.
  ///
  /// Split in two (zero-bubble schedules): the INPUT part computes everything dL/d(input) needs
  /// (the head's and the MTP modules' weight gradients come with it) and returns it; the WEIGHT
  /// part, later, the decoder layers' and the embedding's weight gradients.
  tensor backward(const exec_context& context, std::int64_t micro_batch, const tensor& d_hidden,
                  float loss_scale, troupe_backward_part part = TROUPE_BACKWARD_BOTH);

  void forget(std::int64_t micro_batch);

  std::vector<decoder_layer*> layers();
  /// Every instance of a plugin of `kind` in the slice (MTP modules included), for a hot swap.
  std::vector<instance_slot> plugin_slots(plugin_kind kind);

  /// The slice's parameters under their checkpoint names, with the copies of the shared
  /// embedding and head that DeepSeek's layout keeps in each MTP module.
  std::vector<std::pair<std::string, tensor>> checkpoint_tensors() const;
  std::int64_t mtp_depth() const { return static_cast<std::int64_t>(mtp_.size()); }

  /// MTP module `depth` (1-based), for inference: the plugin that combines the previous depth's
  /// hidden state with the next token's embedding, its transformer block, and the name of its
  /// final norm's weight (the output head is the main one).
  struct mtp_parts {
    layer_instance& combine;
    decoder_layer& block;
    const std::string& norm_name;
  };
  mtp_parts mtp(std::int64_t depth);

 private:
  struct mtp_module {
    std::unique_ptr<layer_instance> combine;  // the mtp plugin
    std::vector<std::string> combine_names;
    std::unique_ptr<decoder_layer> block;
    std::string norm_name;  // shared_head.norm
  };
  struct mtp_saved {
    tensor tokens, targets, embedded, combined, h_out, normed, rstd, logits;
    tensor d_logits;  // the head's gradient per unit of scale, kept where the head allows it
    std::int64_t labelled = 0;
  };
  struct saved {
    model_batch batch;
    tensor d_embedded;  // between the backward parts: dL/d(embedding output), first slice
    bool input_done = false;
    std::vector<tensor> layer_inputs;  // h entering each layer (and the final output last)
    tensor normed, rstd, logits;       // final norm and head (logits when kept)
    tensor d_logits;                   // the head's gradient per unit of scale, when kept
    bool for_backward = true;          // forward's for_backward
    std::int64_t labelled = 0;
    std::vector<mtp_saved> mtp;
  };

  /// Fails unless `context` computes where the parameters live.
  void check_context(const exec_context& context) const;
  /// The slice's input hidden states: the embedded tokens, or the previous stage's output.
  tensor forward_input(const exec_context& context, const model_batch& batch);
  /// The final norm and output head on `x` (or an MTP depth's, by `norm_name`): its loss, and
  /// its logits with `keep_logits` (else none: the loss a chunk of rows at a time, and the
  /// gradient for backward into `d_logits`, when not null, where output_head.hpp can keep it).
  head_loss head_forward(const exec_context& context, const tensor& x, std::int64_t rows,
                         const char* norm_name, const tensor& targets, tensor& normed, tensor& rstd,
                         bool keep_logits, tensor& logits, tensor* d_logits);
  /// Forward of the head and the MTP modules on the last layer's output, into `s` and `out`.
  void forward_head(const exec_context& context, std::int64_t micro_batch, const model_batch& batch,
                    bool keep_logits, const tensor& hidden, saved& s, model_output& out);
  /// The MoE layers' balance losses and expert counts of a micro-batch, into `out`.
  void collect_moe_statistics(std::int64_t micro_batch, model_output& out);
  /// Backward of loss_scale * weight * (sum of the labelled losses) / count through the output
  /// head and the norm `norm_name`, into d_x (pre-norm); nothing when count is 0.
  void head_backward(const exec_context& context, const tensor& x, const tensor& normed,
                     const tensor& rstd, const tensor& targets, const tensor& d_logits,
                     std::int64_t count, double weight, const std::string& norm_name,
                     std::int64_t rows, float loss_scale, tensor& d_x);
  /// Input-gradient part of the head and the MTP modules: dL/d(the last layer's output).
  tensor backward_head(const exec_context& context, std::int64_t micro_batch, saved& s,
                       float loss_scale);
  void backward_weights(const exec_context& context, std::int64_t micro_batch, saved& s);
  std::string locate_non_finite(const saved& s) const;

  model_config config_;
  model_slice slice_;
  model_plugins plugins_;
  model_options options_;
  parameter_store store_;
  std::vector<std::unique_ptr<decoder_layer>> layers_;
  std::vector<mtp_module> mtp_;
  std::map<std::int64_t, saved> saved_;
};

/// The plugin libraries a model needs, loaded from the registry by name ("mla", "moe", "mtp").
model_plugins load_model_plugins(plugin_registry& registry, const model_config& config,
                                 const std::string& attention = "mla",
                                 const std::string& moe = "moe", const std::string& mtp = "mtp");

}  // namespace troupe
