#include "plugins/moe/moe_layer.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/linear.hpp"
#include "kernels/cpu/swiglu.hpp"

namespace troupe::plugin {

namespace {

using kernels::linear_backward;
using kernels::linear_forward;

void gather_rows(const float* source, std::int64_t width, const std::int64_t* rows,
                 std::int64_t count, float* out) {
  for (std::int64_t i = 0; i < count; ++i)
    std::memcpy(out + i * width, source + rows[i] * width,
                static_cast<std::size_t>(width) * sizeof(float));
}

}  // namespace

moe_layer::moe_layer(const model_config& c, double balance_alpha)
    : hidden_(c.hidden_size),
      inter_(c.moe_intermediate_size),
      shared_inter_(c.moe_intermediate_size * c.n_shared_experts),
      balance_alpha_(balance_alpha) {
  router_ = {c.n_routed_experts,    c.n_group,        c.topk_group,
             c.num_experts_per_tok, c.norm_topk_prob, static_cast<float>(c.routed_scaling_factor)};
  const float std_init = 0.02f;
  router_weight_ =
      parameters_.add("mlp.gate.weight", {router_.experts, hidden_}, TROUPE_INIT_NORMAL, std_init);
  router_bias_ = parameters_.add("mlp.gate.e_score_correction_bias", {router_.experts},
                                 TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_BUFFER);
  for (std::int64_t e = 0; e < router_.experts; ++e) {
    const std::string prefix = fmt::format("mlp.experts.{}.", e);
    expert_gate_.push_back(parameters_.add(prefix + "gate_proj.weight", {inter_, hidden_},
                                           TROUPE_INIT_NORMAL, std_init));
    expert_up_.push_back(parameters_.add(prefix + "up_proj.weight", {inter_, hidden_},
                                         TROUPE_INIT_NORMAL, std_init));
    expert_down_.push_back(parameters_.add(prefix + "down_proj.weight", {hidden_, inter_},
                                           TROUPE_INIT_NORMAL, std_init));
  }
  shared_gate_ = shared_up_ = shared_down_ = static_cast<std::size_t>(-1);
  if (shared_inter_ > 0) {
    shared_gate_ = parameters_.add("mlp.shared_experts.gate_proj.weight", {shared_inter_, hidden_},
                                   TROUPE_INIT_NORMAL, std_init);
    shared_up_ = parameters_.add("mlp.shared_experts.up_proj.weight", {shared_inter_, hidden_},
                                 TROUPE_INIT_NORMAL, std_init);
    shared_down_ = parameters_.add("mlp.shared_experts.down_proj.weight", {hidden_, shared_inter_},
                                   TROUPE_INIT_NORMAL, std_init);
  }
}

troupe_status moe_layer::bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                              troupe_error* error) {
  TROUPE_TRY(parameters_.check_bound(params, count, error));
  weight_.assign(static_cast<std::size_t>(count), nullptr);
  grad_.assign(static_cast<std::size_t>(count), nullptr);
  for (std::int32_t i = 0; i < count; ++i) {
    weight_[static_cast<std::size_t>(i)] = data_of(params[i]);
    grad_[static_cast<std::size_t>(i)] = grads[i].data != nullptr ? data_of(grads[i]) : nullptr;
  }
  return TROUPE_STATUS_OK;
}

troupe_status moe_layer::forward(const troupe_exec_context* context, std::int64_t micro_batch,
                                 const DLTensor& x, const DLTensor& y, const DLTensor& counts,
                                 const DLTensor& balance_loss, troupe_error* error) {
  if (weight_.empty()) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward before bind");
  activation_shape shape, out_shape;
  TROUPE_TRY(check_activation(x, hidden_, "the MoE input", shape, error));
  TROUPE_TRY(check_activation(y, hidden_, "the MoE output", out_shape, error));
  if (counts.ndim != 1 || counts.shape[0] != router_.experts || counts.dtype.code != kDLInt ||
      counts.dtype.bits != 64)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "counts must be an i64 tensor [{}]",
                router_.experts);
  if (balance_loss.ndim != 1 || balance_loss.shape[0] != 1 || balance_loss.dtype.bits != 32)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "balance_loss must be an f32 tensor [1]");
  saved_state* s = saved_.start(micro_batch);
  if (s == nullptr)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "micro-batch {} is already in flight",
                micro_batch);
  const troupe_status status = guarded(error, [&]() -> troupe_status {
    s->x = data_of(x);
    s->shape = shape;
    const std::int64_t t = shape.tokens(), e_count = router_.experts, k = router_.topk, h = hidden_;
    // Router, in FP32 like DeepSeek-V3's gate (never FP8): logits = x W_gate^T.
    std::vector<float> logits(static_cast<std::size_t>(t * e_count));
    kernels::cpu::sgemm_on_pool(context->pool, {false, true, t, e_count, h, h, h, e_count}, 1.0f,
                                s->x, weight_[router_weight_], 0.0f, logits.data());
    s->scores.assign(static_cast<std::size_t>(t * e_count), 0.0f);
    s->selected.assign(static_cast<std::size_t>(t * k), 0);
    s->gates.assign(static_cast<std::size_t>(t * k), 0.0f);
    parallel_for(context, t, 32, [&](std::int64_t begin, std::int64_t end) {
      kernels::cpu::router_forward(router_, logits.data() + begin * e_count, weight_[router_bias_],
                                   s->scores.data() + begin * e_count,
                                   s->selected.data() + begin * k, s->gates.data() + begin * k,
                                   end - begin);
    });
    // Group the (token, slot) assignments by expert; tokens stay in ascending order.
    s->offsets.assign(static_cast<std::size_t>(e_count + 1), 0);
    for (std::int64_t a = 0; a < t * k; ++a)
      ++s->offsets[static_cast<std::size_t>(s->selected[static_cast<std::size_t>(a)] + 1)];
    for (std::int64_t e = 0; e < e_count; ++e)
      s->offsets[static_cast<std::size_t>(e + 1)] += s->offsets[static_cast<std::size_t>(e)];
    s->order.assign(static_cast<std::size_t>(t * k), 0);
    std::vector<std::int64_t> fill(s->offsets.begin(), s->offsets.end() - 1),
        position(static_cast<std::size_t>(t * k));
    for (std::int64_t a = 0; a < t * k; ++a) {
      const auto slot = static_cast<std::size_t>(
          fill[static_cast<std::size_t>(s->selected[static_cast<std::size_t>(a)])]++);
      s->order[slot] = a;
      position[static_cast<std::size_t>(a)] = static_cast<std::int64_t>(slot);
    }
    auto* count_out = static_cast<std::int64_t*>(counts.data);
    for (std::int64_t e = 0; e < e_count; ++e)
      count_out[e] =
          s->offsets[static_cast<std::size_t>(e + 1)] - s->offsets[static_cast<std::size_t>(e)];
    *data_of(balance_loss) = static_cast<float>(kernels::cpu::balance_loss_forward(
        router_, s->scores.data(), s->selected.data(), shape.batch, shape.length, balance_alpha_));

    // Routed experts, one task per expert.
    s->gate_up.assign(static_cast<std::size_t>(t * k * 2 * inter_), 0.0f);
    s->expert_out.assign(static_cast<std::size_t>(t * k * h), 0.0f);
    std::vector<troupe_status> statuses(static_cast<std::size_t>(e_count), TROUPE_STATUS_OK);
    std::vector<troupe_error> errors(static_cast<std::size_t>(e_count));
    parallel_for(context, e_count, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<float> rows, hidden_rows;
      std::vector<std::int64_t> tokens;
      for (std::int64_t e = begin; e < end; ++e) {
        const std::int64_t first = s->offsets[static_cast<std::size_t>(e)],
                           n = s->offsets[static_cast<std::size_t>(e + 1)] - first;
        if (n == 0) continue;
        tokens.resize(static_cast<std::size_t>(n));
        for (std::int64_t i = 0; i < n; ++i)
          tokens[static_cast<std::size_t>(i)] = s->order[static_cast<std::size_t>(first + i)] / k;
        rows.resize(static_cast<std::size_t>(n * h));
        gather_rows(s->x, h, tokens.data(), n, rows.data());
        float* gu = s->gate_up.data() + first * 2 * inter_;
        auto& st = statuses[static_cast<std::size_t>(e)];
        auto* err = &errors[static_cast<std::size_t>(e)];
        const auto ei = static_cast<std::size_t>(e);
        st = linear_forward(context, rows.data(), h, weight_[expert_gate_[ei]], gu, 2 * inter_, n,
                            h, inter_, false, err);
        if (st == TROUPE_STATUS_OK)
          st = linear_forward(context, rows.data(), h, weight_[expert_up_[ei]], gu + inter_,
                              2 * inter_, n, h, inter_, false, err);
        if (st != TROUPE_STATUS_OK) continue;
        hidden_rows.resize(static_cast<std::size_t>(n * inter_));
        kernels::cpu::swiglu_forward_fused(gu, hidden_rows.data(), n, inter_);
        st = linear_forward(context, hidden_rows.data(), inter_, weight_[expert_down_[ei]],
                            s->expert_out.data() + first * h, h, n, inter_, h, false, err);
      }
    });
    for (std::int64_t e = 0; e < e_count; ++e)
      if (statuses[static_cast<std::size_t>(e)] != TROUPE_STATUS_OK) {
        *error = errors[static_cast<std::size_t>(e)];
        return statuses[static_cast<std::size_t>(e)];
      }

    // Shared experts write y; then the routed outputs are added per token, slots in order.
    float* out = data_of(y);
    if (shared_inter_ > 0) {
      s->shared_gate_up.assign(static_cast<std::size_t>(t * 2 * shared_inter_), 0.0f);
      TROUPE_TRY(linear_forward(context, s->x, h, weight_[shared_gate_], s->shared_gate_up.data(),
                                2 * shared_inter_, t, h, shared_inter_, false, error));
      TROUPE_TRY(linear_forward(context, s->x, h, weight_[shared_up_],
                                s->shared_gate_up.data() + shared_inter_, 2 * shared_inter_, t, h,
                                shared_inter_, false, error));
      std::vector<float> shared_h(static_cast<std::size_t>(t * shared_inter_));
      kernels::cpu::swiglu_forward_fused(s->shared_gate_up.data(), shared_h.data(), t,
                                         shared_inter_);
      TROUPE_TRY(linear_forward(context, shared_h.data(), shared_inter_, weight_[shared_down_], out,
                                h, t, shared_inter_, h, false, error));
    } else {
      std::fill(out, out + t * h, 0.0f);
    }
    parallel_for(context, t, 32, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t token = begin; token < end; ++token) {
        float* row = out + token * h;
        for (std::int64_t slot = 0; slot < k; ++slot) {
          const float gate = s->gates[static_cast<std::size_t>(token * k + slot)];
          const float* expert_row =
              s->expert_out.data() + position[static_cast<std::size_t>(token * k + slot)] * h;
          for (std::int64_t i = 0; i < h; ++i) row[i] += gate * expert_row[i];
        }
      }
    });
    return TROUPE_STATUS_OK;
  });
  if (status != TROUPE_STATUS_OK) saved_.erase(micro_batch);
  return status;
}

troupe_status moe_layer::backward_input(const troupe_exec_context* context, saved_state& s,
                                        const float* dy, float d_balance, float* dx,
                                        troupe_error* error) {
  const std::int64_t t = s.shape.tokens(), e_count = router_.experts, k = router_.topk, h = hidden_;
  const std::int64_t pairs = t * k;
  // Per assignment (in expert order): d_gate = dy . expert_out, d_expert_out = gate * dy.
  std::vector<float> d_gates(static_cast<std::size_t>(pairs), 0.0f);
  s.d_expert_out.assign(static_cast<std::size_t>(pairs * h), 0.0f);
  parallel_for(context, pairs, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t slot = begin; slot < end; ++slot) {
      const std::int64_t a = s.order[static_cast<std::size_t>(slot)], token = a / k;
      const float* dy_row = dy + token * h;
      const float* out_row = s.expert_out.data() + slot * h;
      float* d_out_row = s.d_expert_out.data() + slot * h;
      const float gate = s.gates[static_cast<std::size_t>(a)];
      double dot = 0.0;
      for (std::int64_t i = 0; i < h; ++i) {
        dot += static_cast<double>(dy_row[i]) * static_cast<double>(out_row[i]);
        d_out_row[i] = gate * dy_row[i];
      }
      d_gates[static_cast<std::size_t>(a)] = static_cast<float>(dot);
    }
  });
  // Experts: back through down, the SwiGLU gate, then gate and up (input part).
  s.d_gate_up.assign(static_cast<std::size_t>(pairs * 2 * inter_), 0.0f);
  s.expert_h.assign(static_cast<std::size_t>(pairs * inter_), 0.0f);
  std::vector<float> d_rows(static_cast<std::size_t>(pairs * h),
                            0.0f);  // dx per assignment, expert order
  std::vector<troupe_status> statuses(static_cast<std::size_t>(e_count), TROUPE_STATUS_OK);
  std::vector<troupe_error> errors(static_cast<std::size_t>(e_count));
  parallel_for(context, e_count, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> dh;
    for (std::int64_t e = begin; e < end; ++e) {
      const std::int64_t first = s.offsets[static_cast<std::size_t>(e)],
                         n = s.offsets[static_cast<std::size_t>(e + 1)] - first;
      if (n == 0) continue;
      const auto ei = static_cast<std::size_t>(e);
      auto& st = statuses[ei];
      auto* err = &errors[ei];
      const float* gu = s.gate_up.data() + first * 2 * inter_;
      kernels::cpu::swiglu_forward_fused(gu, s.expert_h.data() + first * inter_, n, inter_);
      dh.assign(static_cast<std::size_t>(n * inter_), 0.0f);
      st =
          linear_backward(context, s.d_expert_out.data() + first * h, h, nullptr, 0,
                          weight_[expert_down_[ei]], dh.data(), inter_, nullptr, n, inter_, h, err);
      if (st != TROUPE_STATUS_OK) continue;
      float* dgu = s.d_gate_up.data() + first * 2 * inter_;
      kernels::cpu::swiglu_backward_fused(dh.data(), gu, dgu, n, inter_);
      float* dx_rows = d_rows.data() + first * h;
      st = linear_backward(context, dgu, 2 * inter_, nullptr, 0, weight_[expert_gate_[ei]], dx_rows,
                           h, nullptr, n, h, inter_, err);
      if (st == TROUPE_STATUS_OK)
        st = linear_backward(context, dgu + inter_, 2 * inter_, nullptr, 0, weight_[expert_up_[ei]],
                             dx_rows, h, nullptr, n, h, inter_, err);
    }
  });
  for (std::int64_t e = 0; e < e_count; ++e)
    if (statuses[static_cast<std::size_t>(e)] != TROUPE_STATUS_OK) {
      *error = errors[static_cast<std::size_t>(e)];
      return statuses[static_cast<std::size_t>(e)];
    }
  // Sum each token's expert contributions in a fixed order (deterministic).
  std::vector<std::int64_t> position(static_cast<std::size_t>(pairs));
  for (std::int64_t slot = 0; slot < pairs; ++slot)
    position[static_cast<std::size_t>(s.order[static_cast<std::size_t>(slot)])] = slot;
  parallel_for(context, t, 32, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t token = begin; token < end; ++token)
      for (std::int64_t slot = 0; slot < k; ++slot) {
        const float* row = d_rows.data() + position[static_cast<std::size_t>(token * k + slot)] * h;
        float* target = dx + token * h;
        for (std::int64_t i = 0; i < h; ++i) target[i] += row[i];
      }
  });
  // Router: through the gates and the balance loss, in FP32.
  s.d_logits.assign(static_cast<std::size_t>(t * e_count), 0.0f);
  parallel_for(context, t, 32, [&](std::int64_t begin, std::int64_t end) {
    kernels::cpu::router_backward(router_, s.scores.data() + begin * e_count,
                                  s.selected.data() + begin * k, d_gates.data() + begin * k,
                                  s.d_logits.data() + begin * e_count, end - begin);
  });
  if (d_balance != 0.0f)
    kernels::cpu::balance_loss_backward(router_, s.scores.data(), s.selected.data(), s.shape.batch,
                                        s.shape.length, balance_alpha_, d_balance,
                                        s.d_logits.data());
  kernels::cpu::sgemm_on_pool(context->pool, {false, false, t, h, e_count, e_count, h, h}, 1.0f,
                              s.d_logits.data(), weight_[router_weight_], 1.0f, dx);
  // Shared experts.
  if (shared_inter_ > 0) {
    s.shared_h.assign(static_cast<std::size_t>(t * shared_inter_), 0.0f);
    kernels::cpu::swiglu_forward_fused(s.shared_gate_up.data(), s.shared_h.data(), t,
                                       shared_inter_);
    std::vector<float> dh(static_cast<std::size_t>(t * shared_inter_), 0.0f);
    TROUPE_TRY(linear_backward(context, dy, h, nullptr, 0, weight_[shared_down_], dh.data(),
                               shared_inter_, nullptr, t, shared_inter_, h, error));
    s.d_shared_gate_up.assign(static_cast<std::size_t>(t * 2 * shared_inter_), 0.0f);
    kernels::cpu::swiglu_backward_fused(dh.data(), s.shared_gate_up.data(),
                                        s.d_shared_gate_up.data(), t, shared_inter_);
    TROUPE_TRY(linear_backward(context, s.d_shared_gate_up.data(), 2 * shared_inter_, nullptr, 0,
                               weight_[shared_gate_], dx, h, nullptr, t, h, shared_inter_, error));
    TROUPE_TRY(linear_backward(context, s.d_shared_gate_up.data() + shared_inter_,
                               2 * shared_inter_, nullptr, 0, weight_[shared_up_], dx, h, nullptr,
                               t, h, shared_inter_, error));
    s.d_shared_out.assign(dy, dy + t * h);
  }
  s.input_part_done = true;
  return TROUPE_STATUS_OK;
}

troupe_status moe_layer::backward_weight(const troupe_exec_context* context, saved_state& s,
                                         troupe_error* error) {
  const std::int64_t t = s.shape.tokens(), e_count = router_.experts, k = router_.topk, h = hidden_;
  std::vector<troupe_status> statuses(static_cast<std::size_t>(e_count), TROUPE_STATUS_OK);
  std::vector<troupe_error> errors(static_cast<std::size_t>(e_count));
  parallel_for(context, e_count, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> rows;
    std::vector<std::int64_t> tokens;
    for (std::int64_t e = begin; e < end; ++e) {
      const std::int64_t first = s.offsets[static_cast<std::size_t>(e)],
                         n = s.offsets[static_cast<std::size_t>(e + 1)] - first;
      const auto ei = static_cast<std::size_t>(e);
      if (n == 0) continue;
      tokens.resize(static_cast<std::size_t>(n));
      for (std::int64_t i = 0; i < n; ++i)
        tokens[static_cast<std::size_t>(i)] = s.order[static_cast<std::size_t>(first + i)] / k;
      rows.resize(static_cast<std::size_t>(n * h));
      gather_rows(s.x, h, tokens.data(), n, rows.data());
      auto& st = statuses[ei];
      auto* err = &errors[ei];
      st = linear_backward(context, s.d_expert_out.data() + first * h, h,
                           s.expert_h.data() + first * inter_, inter_, weight_[expert_down_[ei]],
                           nullptr, 0, grad_[expert_down_[ei]], n, inter_, h, err);
      const float* dgu = s.d_gate_up.data() + first * 2 * inter_;
      if (st == TROUPE_STATUS_OK)
        st = linear_backward(context, dgu, 2 * inter_, rows.data(), h, weight_[expert_gate_[ei]],
                             nullptr, 0, grad_[expert_gate_[ei]], n, h, inter_, err);
      if (st == TROUPE_STATUS_OK)
        st = linear_backward(context, dgu + inter_, 2 * inter_, rows.data(), h,
                             weight_[expert_up_[ei]], nullptr, 0, grad_[expert_up_[ei]], n, h,
                             inter_, err);
    }
  });
  for (std::int64_t e = 0; e < e_count; ++e)
    if (statuses[static_cast<std::size_t>(e)] != TROUPE_STATUS_OK) {
      *error = errors[static_cast<std::size_t>(e)];
      return statuses[static_cast<std::size_t>(e)];
    }
  if (grad_[router_weight_] != nullptr)
    kernels::cpu::sgemm_on_pool(context->pool, {true, false, e_count, h, t, e_count, h, h}, 1.0f,
                                s.d_logits.data(), s.x, 1.0f, grad_[router_weight_]);
  if (shared_inter_ > 0) {
    TROUPE_TRY(linear_backward(context, s.d_shared_out.data(), h, s.shared_h.data(), shared_inter_,
                               weight_[shared_down_], nullptr, 0, grad_[shared_down_], t,
                               shared_inter_, h, error));
    TROUPE_TRY(linear_backward(context, s.d_shared_gate_up.data(), 2 * shared_inter_, s.x, h,
                               weight_[shared_gate_], nullptr, 0, grad_[shared_gate_], t, h,
                               shared_inter_, error));
    TROUPE_TRY(linear_backward(context, s.d_shared_gate_up.data() + shared_inter_,
                               2 * shared_inter_, s.x, h, weight_[shared_up_], nullptr, 0,
                               grad_[shared_up_], t, h, shared_inter_, error));
  }
  return TROUPE_STATUS_OK;
}

troupe_status moe_layer::backward(const troupe_exec_context* context, std::int64_t micro_batch,
                                  troupe_backward_part part, const DLTensor* dy,
                                  float d_balance_loss, const DLTensor* dx, troupe_error* error) {
  saved_state* s = saved_.find(micro_batch);
  if (s == nullptr)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "no forward saved for micro-batch {}",
                micro_batch);
  const troupe_status status = guarded(error, [&]() -> troupe_status {
    if (part != TROUPE_BACKWARD_WEIGHT) {
      if (s->input_part_done)
        return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                    "input gradients of micro-batch {} are done already", micro_batch);
      if (dy == nullptr || dx == nullptr)
        return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "backward needs dy and dx");
      activation_shape shape;
      TROUPE_TRY(check_activation(*dy, hidden_, "dy", shape, error));
      TROUPE_TRY(check_activation(*dx, hidden_, "dx", shape, error));
      TROUPE_TRY(backward_input(context, *s, data_of(*dy), d_balance_loss, data_of(*dx), error));
    } else if (!s->input_part_done) {
      return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                  "the weight-gradient part needs the input-gradient part first");
    }
    if (part != TROUPE_BACKWARD_INPUT) {
      TROUPE_TRY(backward_weight(context, *s, error));
      saved_.erase(micro_batch);
    }
    return TROUPE_STATUS_OK;
  });
  if (status != TROUPE_STATUS_OK) saved_.erase(micro_batch);
  return status;
}

const std::string& moe_layer::statistics() {
  std::size_t bytes = 0;
  for (const auto& [id, s] : saved_.all())
    bytes += (s.scores.size() + s.gates.size() + s.gate_up.size() + s.expert_out.size() +
              s.shared_gate_up.size() + s.d_gate_up.size() + s.d_expert_out.size() +
              s.d_shared_gate_up.size() + s.d_shared_out.size() + s.d_logits.size() +
              s.shared_h.size() + s.expert_h.size()) *
                 sizeof(float) +
             (s.selected.size()) * sizeof(std::int32_t) +
             (s.order.size() + s.offsets.size()) * sizeof(std::int64_t);
  statistics_ = fmt::format(R"({{"micro_batches": {}, "saved_activation_bytes": {}}})",
                            saved_.all().size(), bytes);
  return statistics_;
}

}  // namespace troupe::plugin
