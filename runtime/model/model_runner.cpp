#include "runtime/model/model_runner.hpp"

#include <cmath>

#include <fmt/ranges.h>

#include "runtime/core/error.hpp"
#include "runtime/device/memory_pool.hpp"
#include "runtime/layers/embedding.hpp"
#include "runtime/layers/norm.hpp"
#include "runtime/layers/output_head.hpp"
#include "runtime/plugin/registry.hpp"

namespace troupe {

std::vector<instance_slot> model_runner::plugin_slots(plugin_kind kind) {
  std::vector<instance_slot> slots;
  for (auto& layer : layers_)
    for (instance_slot slot : layer->plugin_slots(kind)) slots.push_back(slot);
  for (auto& module : mtp_) {
    if (kind == plugin_kind::mtp) slots.push_back(&module.combine);
    for (instance_slot slot : module.block->plugin_slots(kind)) slots.push_back(slot);
  }
  return slots;
}

namespace {

parameter_spec spec(std::vector<std::int64_t> shape, troupe_param_init init, float scale = 0.0f) {
  return {"", std::move(shape), dtype::f32, init, scale, TROUPE_PARAM_TRAINABLE};
}

float* grad_of(parameter& p) {
  return p.grad.defined() ? p.grad.data_as<float>() : nullptr;
}

bool all_finite(const tensor& t) {
  if (!t.defined()) return true;
  if (!t.where().is_cpu()) return all_finite(t.to(device::cpu()));
  const float* v = t.data_as<const float>();
  bool finite = true;
  const std::int64_t n = t.numel();
  for (std::int64_t i = 0; i < n; ++i) finite &= std::isfinite(v[i]);
  return finite;
}

/// tokens shifted left by `k` within each sequence, -1 past the end.
tensor shifted(const tensor& source, std::int64_t k) {
  const std::int64_t batch = source.size(0), length = source.size(1);
  tensor out = tensor::empty(dtype::i32, {batch, length});
  const auto* in = source.data_as<const std::int32_t>();
  auto* o = out.data_as<std::int32_t>();
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t i = 0; i < length; ++i)
      o[b * length + i] = i + k < length ? in[b * length + i + k] : -1;
  return out;
}

void check_tokens(const tensor& t, const char* what) {
  if (!t.defined() || t.type() != dtype::i32 || t.dim() != 2 || !t.where().is_cpu() ||
      !t.is_contiguous())
    fail("the model's {} must be a contiguous CPU i32 tensor [batch, length], got {}", what,
         t.describe());
}

}  // namespace

model_runner::model_runner(const model_config& config, model_slice slice, model_plugins plugins,
                           model_options options)
    : config_(config),
      slice_(slice),
      plugins_(std::move(plugins)),
      options_(options),
      store_(options.where) {
  const std::int64_t layer_count = config_.num_hidden_layers;
  if (slice_.end_layer < 0) slice_.end_layer = layer_count;
  if (slice_.first_layer < 0 || slice_.first_layer > slice_.end_layer ||
      slice_.end_layer > layer_count)
    fail("model slice [{}, {}) is outside the model's {} layers", slice_.first_layer,
         slice_.end_layer, layer_count);
  if (!plugins_.attention) fail("the model needs an attention plugin");
  if (config_.moe_layer_count() > 0 && !plugins_.moe)
    fail("the model has MoE layers but no moe plugin was given");
  const std::int64_t h = config_.hidden_size, vocab = config_.vocab_size;
  const bool mtp = slice_.head && options_.mtp && config_.num_nextn_predict_layers > 0;
  if (mtp && !plugins_.mtp)
    fail("the model has {} MTP modules but no mtp plugin was given",
         config_.num_nextn_predict_layers);
  // The last stage needs the embedding too when MTP modules embed their input tokens, or when
  // the head is tied to it.
  if (slice_.embedding || mtp || (slice_.head && config_.tie_word_embeddings))
    store_.add("model.embed_tokens.weight", spec({vocab, h}, TROUPE_INIT_NORMAL, 0.02f));
  for (std::int64_t i = slice_.first_layer; i < slice_.end_layer; ++i)
    layers_.push_back(
        std::make_unique<decoder_layer>(i, config_.is_moe_layer(i), config_, plugins_, store_));
  if (slice_.head) {
    store_.add("model.norm.weight", spec({h}, TROUPE_INIT_ONES));
    if (!config_.tie_word_embeddings)
      store_.add("lm_head.weight", spec({vocab, h}, TROUPE_INIT_NORMAL, 0.02f));
    for (std::int64_t k = 1; mtp && k <= config_.num_nextn_predict_layers; ++k) {
      const std::int64_t index = layer_count + k - 1;
      mtp_module m;
      instance_options instance;
      instance.model_config_json = complete_json(config_);
      instance.layer_index = static_cast<int>(index);
      m.combine = std::make_unique<layer_instance>(plugins_.mtp, instance);
      m.combine_names = declare_parameters(*m.combine, index, store_);
      const bool moe = config_.n_routed_experts > 0 && index >= config_.first_k_dense_replace;
      m.block = std::make_unique<decoder_layer>(index, moe, config_, plugins_, store_);
      m.norm_name = fmt::format("model.layers.{}.shared_head.norm.weight", index);
      store_.add(m.norm_name, spec({h}, TROUPE_INIT_ONES));
      mtp_.push_back(std::move(m));
    }
  }
  for (auto& layer : layers_) layer->bind(store_);
  for (auto& m : mtp_) {
    auto [values, grads] = bound_tensors(store_, m.combine_names);
    m.combine->bind(values, grads);
    m.block->bind(store_);
  }
}

std::vector<decoder_layer*> model_runner::layers() {
  std::vector<decoder_layer*> out;
  for (auto& layer : layers_) out.push_back(layer.get());
  for (auto& m : mtp_) out.push_back(m.block.get());
  return out;
}

void model_runner::check_context(const exec_context& context) const {
  if (context.where() != options_.where)
    fail("the model's parameters are on {}, but the call computes on {}", to_string(options_.where),
         to_string(context.where()));
}

model_output model_runner::forward(const exec_context& context, std::int64_t micro_batch,
                                   const model_batch& batch, bool keep_logits, bool for_backward) {
  if (saved_.count(micro_batch) != 0) fail("micro-batch {} is already in flight", micro_batch);
  check_context(context);
  const context_stream_scope on_stream(context);
  saved s;
  s.batch = batch;
  s.for_backward = for_backward;
  tensor hidden = forward_input(context, batch);
  model_output out;
  cuda::memory_pool* pool =
      context.where().is_cuda() ? &cuda::memory_pool::on(context.where().index) : nullptr;
  for (auto& layer : layers_) {
    s.layer_inputs.push_back(hidden);
    const std::uint64_t before = pool != nullptr ? pool->statistics().in_use : 0;
    hidden = layer->forward(context, micro_batch, hidden);
    if (pool != nullptr) {
      const std::uint64_t after = pool->statistics().in_use;
      out.layer_memory.push_back(after > before ? after - before : 0);
    }
  }
  s.layer_inputs.push_back(hidden);
  if (slice_.head) {
    forward_head(context, micro_batch, batch, keep_logits, hidden, s, out);
  } else {
    out.hidden = hidden;
  }
  collect_moe_statistics(micro_batch, out);
  if (slice_.head ? !std::isfinite(out.total()) : !all_finite(out.hidden))
    out.non_finite = locate_non_finite(s);
  saved_.emplace(micro_batch, std::move(s));
  return out;
}

model_runner::mtp_parts model_runner::mtp(std::int64_t depth) {
  if (depth < 1 || depth > mtp_depth())
    fail("MTP depth {} requested; this model has {} MTP module(s)", depth, mtp_depth());
  mtp_module& m = mtp_[static_cast<std::size_t>(depth - 1)];
  return {*m.combine, *m.block, m.norm_name};
}

tensor model_runner::forward_input(const exec_context& context, const model_batch& batch) {
  const std::int64_t h = config_.hidden_size, vocab = config_.vocab_size;
  tensor hidden;
  if (slice_.embedding) {
    check_tokens(batch.tokens, "tokens");
    const std::int64_t rows = batch.tokens.numel();
    hidden =
        tensor::empty(dtype::f32, {batch.tokens.size(0), batch.tokens.size(1), h}, context.where());
    embedding_forward(context, store_.at("model.embed_tokens.weight").value.data_as<float>(), vocab,
                      h, batch.tokens.data_as<std::int32_t>(), rows, hidden.data_as<float>());
  } else {
    if (!batch.hidden.defined() || batch.hidden.dim() != 3 || batch.hidden.size(2) != h)
      fail("this model slice starts at layer {} and needs the hidden states [batch, length, {}]",
           slice_.first_layer, h);
    hidden =
        batch.hidden.where() == context.where() ? batch.hidden : batch.hidden.to(context.where());
  }
  return hidden;
}

head_loss model_runner::head_forward(const exec_context& context, const tensor& x,
                                     std::int64_t rows, const char* norm_name,
                                     const tensor& targets, tensor& normed, tensor& rstd,
                                     bool keep_logits, tensor& logits, tensor* d_logits) {
  const std::int64_t h = config_.hidden_size, vocab = config_.vocab_size;
  const float* head_weight =
      store_.at(config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight")
          .value.data_as<float>();
  normed = tensor::empty(dtype::f32, x.shape(), context.where());
  rstd = tensor::empty(dtype::f32, {rows}, context.where());
  rmsnorm_forward(context, x.data_as<float>(), store_.at(norm_name).value.data_as<float>(),
                  normed.data_as<float>(), rstd.data_as<float>(), rows, h,
                  static_cast<float>(config_.rms_norm_eps));
  const std::int32_t* labels = targets.defined() ? targets.data_as<std::int32_t>() : nullptr;
  if (d_logits != nullptr) *d_logits = tensor();
  if (!keep_logits) {  // training: the loss a chunk of rows at a time, no logits kept
    logits = tensor();
    if (labels == nullptr) return head_loss{};
    if (d_logits != nullptr && head_keeps_gradient(context, rows, vocab))
      return output_head_loss_keeping_gradient(context, normed.data_as<float>(), head_weight,
                                               labels, rows, h, vocab, *d_logits);
    return output_head_loss(context, normed.data_as<float>(), head_weight, labels, rows, h, vocab);
  }
  logits = tensor::empty(dtype::f32, {x.size(0), x.size(1), vocab}, context.where());
  return output_head_forward(context, normed.data_as<float>(), head_weight, logits.data_as<float>(),
                             labels, rows, h, vocab);
}

void model_runner::forward_head(const exec_context& context, std::int64_t micro_batch,
                                const model_batch& batch, bool keep_logits, const tensor& hidden,
                                saved& s, model_output& out) {
  const std::int64_t h = config_.hidden_size, vocab = config_.vocab_size;
  const std::int64_t rows = hidden.numel() / h;
  const bool labelled = batch.targets.defined();
  if (labelled) check_tokens(batch.targets, "targets");
  const head_loss main =
      head_forward(context, hidden, rows, "model.norm.weight", batch.targets, s.normed, s.rstd,
                   keep_logits, s.logits, s.for_backward ? &s.d_logits : nullptr);
  out.loss = main.mean();
  s.labelled = main.labelled;
  if (keep_logits) out.logits = s.logits;
  // Multi-token prediction: depth k predicts the token k+1 ahead.
  tensor previous = hidden;
  const double weight = mtp_.empty() ? 0.0 : options_.mtp_weight / static_cast<double>(mtp_.size());
  for (std::size_t d = 0; d < mtp_.size(); ++d) {
    const auto k = static_cast<std::int64_t>(d + 1);
    check_tokens(batch.tokens, "tokens (for the MTP modules)");
    mtp_saved ms;
    ms.tokens = shifted(batch.tokens, k);
    if (labelled) ms.targets = shifted(batch.targets, k);
    ms.embedded = tensor::empty(dtype::f32, hidden.shape(), context.where());
    embedding_forward(context, store_.at("model.embed_tokens.weight").value.data_as<float>(), vocab,
                      h, ms.tokens.data_as<std::int32_t>(), rows, ms.embedded.data_as<float>());
    ms.combined = mtp_[d].combine->forward(context, micro_batch,
                                           std::vector<tensor>{previous, ms.embedded})[0];
    ms.h_out = mtp_[d].block->forward(context, micro_batch, ms.combined);
    const head_loss depth =
        head_forward(context, ms.h_out, rows, mtp_[d].norm_name.c_str(), ms.targets, ms.normed,
                     ms.rstd, keep_logits, ms.logits, s.for_backward ? &ms.d_logits : nullptr);
    ms.labelled = depth.labelled;
    out.mtp_loss += weight * depth.mean();
    if (keep_logits) out.mtp_logits.push_back(ms.logits);
    previous = ms.h_out;
    s.mtp.push_back(std::move(ms));
  }
}

void model_runner::collect_moe_statistics(std::int64_t micro_batch, model_output& out) {
  for (decoder_layer* layer : layers())
    if (layer->is_moe()) {
      out.balance_loss += layer->balance_loss(micro_batch);
      out.moe_layers.push_back(layer->index());
      const tensor& counts = layer->expert_counts(micro_batch);
      out.expert_counts.push_back(counts.where().is_cpu() ? counts : counts.to(device::cpu()));
    }
}

std::string model_runner::locate_non_finite(const saved& s) const {
  if (!all_finite(s.layer_inputs.front()))
    return slice_.embedding ? "the embedding output (model.embed_tokens.weight)"
                            : fmt::format(
                                  "the hidden states entering model.layers.{} (from the "
                                  "previous stage)",
                                  slice_.first_layer);
  for (std::size_t i = 0; i < layers_.size(); ++i)
    if (!all_finite(s.layer_inputs[i + 1]))
      return fmt::format("the output of model.layers.{}", layers_[i]->index());
  if (slice_.head) {
    if (!all_finite(s.normed) || (s.logits.defined() && !all_finite(s.logits)))
      return "the logits (model.norm, lm_head)";
    for (std::size_t d = 0; d < s.mtp.size(); ++d)
      if (!all_finite(s.mtp[d].h_out) ||
          (s.mtp[d].logits.defined() && !all_finite(s.mtp[d].logits)))
        return fmt::format("the MTP module model.layers.{}",
                           config_.num_hidden_layers + static_cast<std::int64_t>(d));
    return "the loss (cross-entropy or balance loss)";
  }
  return "the output of this stage";
}

tensor model_runner::backward(const exec_context& context, std::int64_t micro_batch,
                              const tensor& d_hidden, float loss_scale, troupe_backward_part part) {
  auto it = saved_.find(micro_batch);
  if (it == saved_.end()) fail("no forward saved for micro-batch {}", micro_batch);
  check_context(context);
  const context_stream_scope on_stream(context);
  saved& s = it->second;
  if (part == TROUPE_BACKWARD_WEIGHT) {
    if (!s.input_done)
      fail("micro-batch {}: the weight-gradient part needs the input-gradient part first",
           micro_batch);
    backward_weights(context, micro_batch, s);
    saved_.erase(it);
    return tensor();
  }
  if (s.input_done) fail("micro-batch {}: input gradients are done already", micro_batch);
  tensor d_h;
  if (slice_.head) {
    d_h = backward_head(context, micro_batch, s, loss_scale);
  } else {
    if (!d_hidden.defined() || d_hidden.shape() != s.layer_inputs.back().shape())
      fail("backward of this model slice needs dL/dhidden of shape [{}]",
           fmt::join(s.layer_inputs.back().shape(), ", "));
    d_h = d_hidden.where() == context.where() ? d_hidden.clone() : d_hidden.to(context.where());
  }
  for (std::size_t i = layers_.size(); i-- > 0;)
    d_h = layers_[i]->backward(context, micro_batch, TROUPE_BACKWARD_INPUT, d_h, loss_scale);
  s.input_done = true;
  tensor result;
  if (slice_.embedding)
    s.d_embedded = d_h;  // the embedding has weights only: its part waits for the weight part
  else
    result = d_h;
  if (part == TROUPE_BACKWARD_BOTH) {
    backward_weights(context, micro_batch, s);
    saved_.erase(it);
  }
  return result;
}

void model_runner::head_backward(const exec_context& context, const tensor& x, const tensor& normed,
                                 const tensor& rstd, const tensor& targets, const tensor& d_logits,
                                 std::int64_t count, double weight, const std::string& norm_name,
                                 std::int64_t rows, float loss_scale, tensor& d_x) {
  if (count == 0) return;
  const std::int64_t h = config_.hidden_size, vocab = config_.vocab_size;
  parameter& head =
      store_.at(config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  tensor d_normed = tensor::zeros_async(dtype::f32, x.shape(), context.where());
  const auto scale =
      static_cast<float>(static_cast<double>(loss_scale) * weight / static_cast<double>(count));
  if (d_logits.defined())
    output_head_backward_kept(context, normed.data_as<float>(), head.value.data_as<float>(),
                              d_logits, scale, d_normed.data_as<float>(), grad_of(head), rows, h,
                              vocab);
  else
    output_head_backward(context, normed.data_as<float>(), head.value.data_as<float>(),
                         targets.data_as<std::int32_t>(), scale, d_normed.data_as<float>(),
                         grad_of(head), rows, h, vocab);
  parameter& norm = store_.at(norm_name);
  rmsnorm_backward(context, d_normed.data_as<float>(), x.data_as<float>(),
                   norm.value.data_as<float>(), rstd.data_as<float>(), d_x.data_as<float>(),
                   grad_of(norm), rows, h);
}

tensor model_runner::backward_head(const exec_context& context, std::int64_t micro_batch, saved& s,
                                   float loss_scale) {
  const std::int64_t h = config_.hidden_size;
  const tensor& final_hidden = s.layer_inputs.back();
  const std::int64_t rows = final_hidden.numel() / h;
  const bool labelled = s.batch.targets.defined();
  // MTP depths in reverse: each passes its gradient to the representation it started from.
  tensor d_next = tensor::zeros_async(dtype::f32, final_hidden.shape(), context.where());
  const double weight = mtp_.empty() ? 0.0 : options_.mtp_weight / static_cast<double>(mtp_.size());
  for (std::size_t d = mtp_.size(); d-- > 0;) {
    parameter& embedding = store_.at("model.embed_tokens.weight");
    mtp_saved& ms = s.mtp[d];
    if (labelled)
      head_backward(context, ms.h_out, ms.normed, ms.rstd, ms.targets, ms.d_logits, ms.labelled,
                    weight, mtp_[d].norm_name, rows, loss_scale, d_next);
    ms.d_logits = tensor();  // used: not held while the weight part waits
    const tensor d_combined =
        mtp_[d].block->backward(context, micro_batch, TROUPE_BACKWARD_BOTH, d_next, loss_scale);
    tensor d_previous = tensor::zeros_async(dtype::f32, final_hidden.shape(), context.where());
    tensor d_embedded = tensor::zeros_async(dtype::f32, final_hidden.shape(), context.where());
    mtp_[d].combine->backward(context, micro_batch, TROUPE_BACKWARD_BOTH,
                              std::vector<tensor>{d_combined},
                              std::vector<tensor>{d_previous, d_embedded});
    if (float* d_table = grad_of(embedding))
      embedding_backward(context, d_embedded.data_as<float>(), ms.tokens.data_as<std::int32_t>(),
                         rows, h, config_.vocab_size, d_table);
    d_next = d_previous;
  }
  tensor d_h = d_next;
  if (labelled)
    head_backward(context, final_hidden, s.normed, s.rstd, s.batch.targets, s.d_logits, s.labelled,
                  1.0, "model.norm.weight", rows, loss_scale, d_h);
  s.d_logits = tensor();
  return d_h;
}

void model_runner::backward_weights(const exec_context& context, std::int64_t micro_batch,
                                    saved& s) {
  for (std::size_t i = layers_.size(); i-- > 0;)
    layers_[i]->backward(context, micro_batch, TROUPE_BACKWARD_WEIGHT, tensor(), 0.0f);
  if (slice_.embedding) {
    parameter& embedding = store_.at("model.embed_tokens.weight");
    if (float* d_table = grad_of(embedding))
      embedding_backward(context, s.d_embedded.data_as<float>(),
                         s.batch.tokens.data_as<std::int32_t>(), s.batch.tokens.numel(),
                         config_.hidden_size, config_.vocab_size, d_table);
  }
}

std::vector<std::pair<std::string, tensor>> model_runner::checkpoint_tensors() const {
  auto tensors = store_.named_values();
  for (std::size_t d = 0; d < mtp_.size(); ++d) {
    const std::string prefix =
        fmt::format("model.layers.{}.", config_.num_hidden_layers + static_cast<std::int64_t>(d));
    tensors.emplace_back(prefix + "embed_tokens.weight",
                         store_.find("model.embed_tokens.weight")->value);
    const char* head = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    tensors.emplace_back(prefix + "shared_head.head.weight", store_.find(head)->value);
  }
  return tensors;
}

void model_runner::forget(std::int64_t micro_batch) {
  for (decoder_layer* layer : layers()) layer->forget(micro_batch);
  for (auto& m : mtp_) m.combine->forget(micro_batch);
  saved_.erase(micro_batch);
}

model_plugins load_model_plugins(plugin_registry& registry, const model_config& config,
                                 const std::string& attention, const std::string& moe,
                                 const std::string& mtp) {
  model_plugins plugins;
  plugins.attention = registry.load(attention, {plugin_kind::attention});
  if (config.n_routed_experts > 0) plugins.moe = registry.load(moe, {plugin_kind::moe});
  if (config.num_nextn_predict_layers > 0) plugins.mtp = registry.load(mtp, {plugin_kind::mtp});
  return plugins;
}

}  // namespace troupe
