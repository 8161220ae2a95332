#include "runtime/model/decoder_layer.hpp"

#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "kernels/dispatch/device_ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/layers/norm.hpp"

namespace troupe {

std::vector<instance_slot> decoder_layer::plugin_slots(plugin_kind kind) {
  if (kind == plugin_kind::attention) return {&attention_};
  if (kind == plugin_kind::moe && moe_) return {&moe_};
  return {};
}

std::vector<std::string> declare_parameters(layer_instance& instance, std::int64_t layer,
                                            parameter_store& store) {
  const std::string prefix = fmt::format("model.layers.{}.", layer);
  std::vector<std::string> names;
  for (const auto& spec : instance.parameters()) {
    names.push_back(prefix + spec.name);
    store.add(names.back(), spec).layer = layer;
  }
  return names;
}

namespace {

parameter_spec vector_spec(std::int64_t n, troupe_param_init init) {
  return {"", {n}, dtype::f32, init, 0.0f, TROUPE_PARAM_TRAINABLE};
}

parameter_spec matrix_spec(std::int64_t rows, std::int64_t cols) {
  return {"", {rows, cols}, dtype::f32, TROUPE_INIT_NORMAL, 0.02f, TROUPE_PARAM_TRAINABLE};
}

float* grad_or_null(parameter& p) {
  return p.grad.defined() ? p.grad.data_as<float>() : nullptr;
}

}  // namespace

decoder_layer::decoder_layer(std::int64_t index, bool moe, const model_config& config,
                             const model_plugins& plugins, parameter_store& store)
    : index_(index),
      prefix_(fmt::format("model.layers.{}.", index)),
      hidden_(config.hidden_size),
      eps_(static_cast<float>(config.rms_norm_eps)) {
  instance_options options;
  options.model_config_json = complete_json(config);
  options.layer_index = static_cast<int>(index);
  options.options_json = plugins.attention_options;
  attention_ = std::make_unique<layer_instance>(plugins.attention, options);
  attention_names_ = declare_parameters(*attention_, index_, store);
  store.add(prefix_ + "input_layernorm.weight", vector_spec(hidden_, TROUPE_INIT_ONES));
  store.add(prefix_ + "post_attention_layernorm.weight", vector_spec(hidden_, TROUPE_INIT_ONES));
  if (moe) {
    options.options_json = plugins.moe_options;
    if (plugins.experts != nullptr) {
      experts_ = plugins.experts;
      routed_experts_ = config.n_routed_experts;
      topk_ = config.num_experts_per_tok;
      nlohmann::json moe_options = nlohmann::json::parse(plugins.moe_options);
      moe_options["part"] = "routing";
      options.options_json = moe_options.dump();
    }
    moe_ = std::make_unique<layer_instance>(plugins.moe, options);
    moe_names_ = declare_parameters(*moe_, index_, store);
  } else {
    dense_.emplace(hidden_, config.intermediate_size);
    store.add(prefix_ + "mlp.gate_proj.weight", matrix_spec(config.intermediate_size, hidden_));
    store.add(prefix_ + "mlp.up_proj.weight", matrix_spec(config.intermediate_size, hidden_));
    store.add(prefix_ + "mlp.down_proj.weight", matrix_spec(hidden_, config.intermediate_size));
  }
}

void decoder_layer::bind(parameter_store& store) {
  auto [values, grads] = bound_tensors(store, attention_names_);
  attention_->bind(values, grads);
  if (moe_) {
    auto [moe_values, moe_grads] = bound_tensors(store, moe_names_);
    moe_->bind(moe_values, moe_grads);
  } else {
    auto& gate = store.at(prefix_ + "mlp.gate_proj.weight");
    auto& up = store.at(prefix_ + "mlp.up_proj.weight");
    auto& down = store.at(prefix_ + "mlp.down_proj.weight");
    dense_weights_ = {
        gate.value.data_as<float>(), up.value.data_as<float>(), down.value.data_as<float>(),
        grad_or_null(gate),          grad_or_null(up),          grad_or_null(down)};
  }
  auto& in = store.at(prefix_ + "input_layernorm.weight");
  auto& post = store.at(prefix_ + "post_attention_layernorm.weight");
  input_norm_ = in.value.data_as<float>();
  post_norm_ = post.value.data_as<float>();
  d_input_norm_ = grad_or_null(in);
  d_post_norm_ = grad_or_null(post);
}

tensor decoder_layer::forward(const exec_context& context, std::int64_t micro_batch,
                              const tensor& h_in) {
  if (saved_.count(micro_batch) != 0)
    fail("layer {}: micro-batch {} is already in flight", index_, micro_batch);
  const device where = context.where();
  if (where.is_cuda() && experts_ != nullptr)
    fail(
        "layer {}: expert shards (expert parallelism) run on the CPU; on a GPU the moe plugin "
        "computes whole layers",
        index_);
  saved s;
  s.h_in = h_in;
  const auto& shape = h_in.shape();
  const std::int64_t rows = h_in.numel() / hidden_;
  s.a_in = tensor::empty(dtype::f32, shape, where);
  s.rstd_in = tensor::empty(dtype::f32, {rows}, where);
  rmsnorm_forward(context, h_in.data_as<float>(), input_norm_, s.a_in.data_as<float>(),
                  s.rstd_in.data_as<float>(), rows, hidden_, eps_);
  const tensor a_out = attention_->forward(context, micro_batch, std::vector<tensor>{s.a_in})[0];
  s.h_mid = a_out;  // h_mid = h_in + a_out, computed in place in the attention output
  float* mid = s.h_mid.data_as<float>();
  kernels::ops::add(context.abi(), mid, h_in.data_as<float>(), rows * hidden_);
  s.m_in = tensor::empty(dtype::f32, shape, where);
  s.rstd_post = tensor::empty(dtype::f32, {rows}, where);
  rmsnorm_forward(context, mid, post_norm_, s.m_in.data_as<float>(), s.rstd_post.data_as<float>(),
                  rows, hidden_, eps_);
  tensor h_out;
  if (moe_ && experts_ != nullptr) {
    h_out = sharded_moe_forward(context, micro_batch, s);
  } else if (moe_) {
    auto outputs = moe_->forward(context, micro_batch, std::vector<tensor>{s.m_in});
    h_out = outputs[0];
    s.counts = outputs[1];
    s.balance = outputs[2];
  } else {
    h_out = tensor::empty(dtype::f32, shape, where);
    dense_->forward(context, dense_weights_, micro_batch, s.m_in.data_as<float>(),
                    h_out.data_as<float>(), rows);
  }
  kernels::ops::add(context.abi(), h_out.data_as<float>(), mid, rows * hidden_);
  saved_.emplace(micro_batch, std::move(s));
  return h_out;
}

tensor decoder_layer::forward_cached(const exec_context& context, const troupe_kv_cache& cache,
                                     const tensor& h_in) {
  // NOTES: the ffn plugins compute under a micro-batch id that training never uses and forget it
  // at once: inference keeps nothing for backward.
  constexpr std::int64_t inference = std::numeric_limits<std::int64_t>::max();
  const device where = context.where();
  if (where.is_cuda() && experts_ != nullptr)
    fail(
        "layer {}: expert shards (expert parallelism) run on the CPU; on a GPU the moe plugin "
        "computes whole layers",
        index_);
  const auto& shape = h_in.shape();
  const std::int64_t rows = h_in.numel() / hidden_;
  tensor normed = tensor::empty(dtype::f32, shape, where);
  tensor rstd = tensor::empty(dtype::f32, {rows}, where);
  rmsnorm_forward(context, h_in.data_as<float>(), input_norm_, normed.data_as<float>(),
                  rstd.data_as<float>(), rows, hidden_, eps_);
  const tensor mid = attention_->forward_cached(context, cache, normed);
  kernels::ops::add(context.abi(), mid.data_as<float>(), h_in.data_as<float>(), rows * hidden_);
  rmsnorm_forward(context, mid.data_as<float>(), post_norm_, normed.data_as<float>(),
                  rstd.data_as<float>(), rows, hidden_, eps_);
  tensor h_out;
  if (moe_ && experts_ != nullptr) {
    saved s;
    s.m_in = normed;
    // NOTES: whatever happens, the router and every shard forget the micro-batch (a failed step
    // must leave nothing behind, or every later step would find it still in flight).
    try {
      h_out = sharded_moe_forward(context, inference, s);
    } catch (...) {
      moe_->forget(inference);
      experts_->abandon(index_, inference);
      throw;
    }
    cached_counts_ = s.counts;
    moe_->forget(inference);
    experts_->forget(index_, inference);
  } else if (moe_) {
    auto outputs = moe_->forward(context, inference, std::vector<tensor>{normed});
    h_out = outputs[0];
    cached_counts_ = outputs[1];
    moe_->forget(inference);
  } else {
    h_out = tensor::empty(dtype::f32, shape, where);
    dense_->forward(context, dense_weights_, inference, normed.data_as<float>(),
                    h_out.data_as<float>(), rows);
    dense_->forget(inference);
  }
  kernels::ops::add(context.abi(), h_out.data_as<float>(), mid.data_as<float>(), rows * hidden_);
  return h_out;
}

tensor decoder_layer::backward(const exec_context& context, std::int64_t micro_batch,
                               troupe_backward_part part, const tensor& dh_out, float loss_scale) {
  auto it = saved_.find(micro_batch);
  if (it == saved_.end())
    fail("layer {}: no forward saved for micro-batch {}", index_, micro_batch);
  saved& s = it->second;
  tensor dh_in;
  if (part != TROUPE_BACKWARD_WEIGHT) {
    const std::int64_t rows = dh_out.numel() / hidden_;
    // The ffn branch.
    tensor d_m_in;
    if (moe_ && experts_ != nullptr) {
      d_m_in = sharded_moe_backward_input(context, micro_batch, s, dh_out, loss_scale);
    } else if (moe_) {
      // NOTES: on a GPU the zeros, the copy below and the loss scale (a host scalar the plugin
      // reads as it is, ABI 1.6) are enqueued without waiting for the stream, so the host stays
      // ahead of the GPU through backward.
      d_m_in = tensor::zeros_async(dtype::f32, dh_out.shape(), context.where());
      tensor d_balance = tensor::empty(dtype::f32, {1});
      *d_balance.data_as<float>() = loss_scale;
      // A plugin built before ABI 1.6 reads the scalar from the context's device.
      if (context.where().is_cuda() && moe_->library().abi_minor < 6)
        d_balance = d_balance.to(context.where());
      moe_->backward(context, micro_batch,
                     part == TROUPE_BACKWARD_BOTH ? TROUPE_BACKWARD_INPUT : part,
                     std::vector<tensor>{dh_out, tensor(), d_balance}, std::vector<tensor>{d_m_in});
    } else {
      d_m_in = tensor::zeros_async(dtype::f32, dh_out.shape(), context.where());
      dense_->backward(context, dense_weights_, micro_batch, TROUPE_BACKWARD_INPUT,
                       dh_out.data_as<float>(), d_m_in.data_as<float>());
    }
    tensor dh_mid = dh_out.clone_async();
    rmsnorm_backward(context, d_m_in.data_as<float>(), s.h_mid.data_as<float>(), post_norm_,
                     s.rstd_post.data_as<float>(), dh_mid.data_as<float>(), d_post_norm_, rows,
                     hidden_);
    // The attention branch.
    tensor d_a_in = tensor::zeros_async(dtype::f32, dh_out.shape(), context.where());
    attention_->backward(context, micro_batch, TROUPE_BACKWARD_INPUT, std::vector<tensor>{dh_mid},
                         std::vector<tensor>{d_a_in});
    dh_in = dh_mid;
    rmsnorm_backward(context, d_a_in.data_as<float>(), s.h_in.data_as<float>(), input_norm_,
                     s.rstd_in.data_as<float>(), dh_in.data_as<float>(), d_input_norm_, rows,
                     hidden_);
  }
  if (part != TROUPE_BACKWARD_INPUT) {
    attention_->backward(context, micro_batch, TROUPE_BACKWARD_WEIGHT, {}, {});
    if (moe_) {
      moe_->backward(context, micro_batch, TROUPE_BACKWARD_WEIGHT, {}, {});
      if (experts_ != nullptr) experts_->backward_weight(index_, micro_batch);
    } else {
      dense_->backward(context, dense_weights_, micro_batch, TROUPE_BACKWARD_WEIGHT, nullptr,
                       nullptr);
    }
    saved_.erase(it);
  }
  return dh_in;
}

tensor decoder_layer::sharded_moe_forward(const exec_context& context, std::int64_t micro_batch,
                                          saved& s) {
  auto outputs = moe_->forward(context, micro_batch, std::vector<tensor>{s.m_in});
  tensor h_out = outputs[0];  // the shared experts' output; the routed ones are added below
  s.counts = outputs[1];
  s.balance = outputs[2];
  s.gates = outputs[4];
  const std::int64_t tokens = s.m_in.numel() / hidden_, k = topk_, h = hidden_;
  experts_->observe_routing(index_, outputs[3].data_as<const std::int32_t>(), tokens, k);
  kernels::cpu::group_by_expert(outputs[3].data_as<const std::int32_t>(), tokens, k,
                                routed_experts_, s.grouping);
  tensor rows = tensor::empty(dtype::f32, {tokens * k, h});
  context.pool().parallel_for(tokens * k, 64, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::gather_expert_rows(s.m_in.data_as<const float>(), s.grouping.order.data(), k, h,
                                     rows.data_as<float>(), begin, end);
  });
  const std::span<const std::int64_t> counts(s.counts.data_as<const std::int64_t>(),
                                             static_cast<std::size_t>(routed_experts_));
  s.expert_out = experts_->forward(index_, micro_batch, rows, counts);
  context.pool().parallel_for(tokens, 32, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::combine_forward(s.expert_out.data_as<const float>(),
                                  s.gates.data_as<const float>(), s.grouping.position.data(), k, h,
                                  h_out.data_as<float>(), begin, end);
  });
  return h_out;
}

tensor decoder_layer::sharded_moe_backward_input(const exec_context& context,
                                                 std::int64_t micro_batch, saved& s,
                                                 const tensor& dh_out, float loss_scale) {
  const std::int64_t tokens = dh_out.numel() / hidden_, k = topk_, h = hidden_;
  tensor d_gates = tensor::zeros(dtype::f32, s.gates.shape());
  tensor d_rows = tensor::empty(dtype::f32, {tokens * k, h});
  context.pool().parallel_for(tokens * k, 64, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::combine_backward(dh_out.data_as<const float>(),
                                   s.expert_out.data_as<const float>(),
                                   s.gates.data_as<const float>(), s.grouping.order.data(), k, h,
                                   d_gates.data_as<float>(), d_rows.data_as<float>(), begin, end);
  });
  const tensor dx_rows = experts_->backward_input(index_, micro_batch, d_rows);
  // Routed experts first, then the routing part adds the router's and the shared experts'
  // gradients: the order the whole layer adds them in.
  tensor d_m_in = tensor::zeros(dtype::f32, dh_out.shape());
  context.pool().parallel_for(tokens, 32, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::scatter_add_rows(dx_rows.data_as<const float>(), s.grouping.position.data(), k, h,
                                   d_m_in.data_as<float>(), begin, end);
  });
  tensor d_balance = tensor::empty(dtype::f32, {1});
  *d_balance.data_as<float>() = loss_scale;
  moe_->backward(context, micro_batch, TROUPE_BACKWARD_INPUT,
                 std::vector<tensor>{dh_out, tensor(), d_balance, tensor(), d_gates},
                 std::vector<tensor>{d_m_in});
  return d_m_in;
}

void decoder_layer::forget(std::int64_t micro_batch) {
  attention_->forget(micro_batch);
  if (moe_) moe_->forget(micro_batch);
  if (experts_ != nullptr) experts_->forget(index_, micro_batch);
  if (dense_) dense_->forget(micro_batch);
  saved_.erase(micro_batch);
}

const decoder_layer::saved& decoder_layer::saved_for(std::int64_t micro_batch) const {
  auto it = saved_.find(micro_batch);
  if (it == saved_.end())
    fail("layer {}: no forward saved for micro-batch {}", index_, micro_batch);
  return it->second;
}

const tensor& decoder_layer::expert_counts(std::int64_t micro_batch) const {
  return saved_for(micro_batch).counts;
}

double decoder_layer::balance_loss(std::int64_t micro_batch) const {
  const tensor& b = saved_for(micro_batch).balance;
  if (!b.defined()) return 0.0;
  return static_cast<double>(*(b.where().is_cpu() ? b : b.to(device::cpu())).data_as<float>());
}

}  // namespace troupe
