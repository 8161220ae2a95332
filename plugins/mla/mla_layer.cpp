#include "plugins/mla/mla_layer.hpp"

#include <cmath>
#include <cstring>

#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/linear.hpp"
#include "kernels/cpu/rmsnorm.hpp"
#include "kernels/cpu/rope.hpp"

namespace troupe::plugin {

namespace {

using kernels::linear_backward;
using kernels::linear_forward;

/// YaRN's attention-temperature correction: 0.1 * m * ln(factor) + 1 (1 without scaling).
double yarn_mscale(double factor, double m) {
  return factor <= 1.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

std::size_t float_bytes(const std::vector<float>& v) {
  return v.size() * sizeof(float);
}

}  // namespace

std::size_t mla_layer::saved_state::bytes() const {
  return float_bytes(q_latent) + float_bytes(q_rstd) + float_bytes(kv_latent) +
         float_bytes(kv_rstd) + float_bytes(attention) + float_bytes(lse) + float_bytes(d_output) +
         float_bytes(d_q) + float_bytes(d_q_latent) + float_bytes(d_kv) + float_bytes(d_kv_latent) +
         float_bytes(q_normed) + float_bytes(kv_normed);
}

mla_layer::mla_layer(const model_shape& c, mla_path path)
    : hidden_(c.hidden_size),
      heads_(c.num_attention_heads),
      q_rank_(c.q_lora_rank.value_or(0)),
      kv_rank_(c.kv_lora_rank),
      nope_(c.qk_nope_head_dim),
      rope_(c.qk_rope_head_dim),
      v_dim_(c.v_head_dim),
      qk_dim_(c.qk_head_dim()),
      eps_(static_cast<float>(c.rms_norm_eps)),
      path_(path) {
  // Softmax scale: qk_dim^-0.5, times mscale^2 with YaRN (mscale from mscale_all_dim).
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_dim_));
  kernels::cpu::yarn_parameters yarn;
  if (c.yarn) {
    yarn = {c.yarn->factor, c.yarn->original_max_position_embeddings, c.yarn->beta_fast,
            c.yarn->beta_slow};
    if (c.yarn->mscale_all_dim != 0.0) {
      const double m = yarn_mscale(c.yarn->factor, c.yarn->mscale_all_dim);
      scale *= m * m;
    }
  }
  scale_ = static_cast<float>(scale);
  inverse_frequencies_ =
      kernels::cpu::rope_inverse_frequencies(rope_, c.rope_theta, c.yarn ? &yarn : nullptr);

  const float std_init = 0.02f;  // transformers' initializer_range default
  const std::int64_t q_out = heads_ * qk_dim_;
  q_a_ = q_norm_ = q_b_ = q_proj_ = static_cast<std::size_t>(-1);
  if (q_rank_ > 0) {
    q_a_ = parameters_.add("self_attn.q_a_proj.weight", {q_rank_, hidden_}, TROUPE_INIT_NORMAL,
                           std_init);
    q_norm_ = parameters_.add("self_attn.q_a_layernorm.weight", {q_rank_}, TROUPE_INIT_ONES, 0.0f);
    q_b_ = parameters_.add("self_attn.q_b_proj.weight", {q_out, q_rank_}, TROUPE_INIT_NORMAL,
                           std_init);
  } else {
    q_proj_ =
        parameters_.add("self_attn.q_proj.weight", {q_out, hidden_}, TROUPE_INIT_NORMAL, std_init);
  }
  kv_a_ = parameters_.add("self_attn.kv_a_proj_with_mqa.weight", {kv_rank_ + rope_, hidden_},
                          TROUPE_INIT_NORMAL, std_init);
  kv_norm_ = parameters_.add("self_attn.kv_a_layernorm.weight", {kv_rank_}, TROUPE_INIT_ONES, 0.0f);
  kv_b_ = parameters_.add("self_attn.kv_b_proj.weight", {heads_ * (nope_ + v_dim_), kv_rank_},
                          TROUPE_INIT_NORMAL, std_init);
  o_proj_ = parameters_.add("self_attn.o_proj.weight", {hidden_, heads_ * v_dim_},
                            TROUPE_INIT_NORMAL, std_init);
}

troupe_status mla_layer::bind(const DLTensor* params, const DLTensor* grads, std::int32_t count,
                              troupe_error* error) {
  TROUPE_TRY(parameters_.bind(params, grads, count, weight_, grad_, error));
  return TROUPE_STATUS_OK;
}

void mla_layer::ensure_rope_tables(std::int64_t length) {
  if (length <= table_length_) return;
  const auto half = static_cast<std::size_t>(rope_ / 2);
  cos_.resize(static_cast<std::size_t>(length) * half);
  sin_.resize(static_cast<std::size_t>(length) * half);
  kernels::cpu::rope_tables(inverse_frequencies_, length, cos_.data(), sin_.data());
  table_length_ = length;
}

troupe_status mla_layer::project(const troupe_exec_context* context, saved_state& s, projections& p,
                                 bool up_project_kv, troupe_error* error) {
  const std::int64_t t = s.shape.tokens();
  const std::int64_t q_out = heads_ * qk_dim_;
  // Queries.
  p.q.assign(static_cast<std::size_t>(t * q_out), 0.0f);
  if (q_rank_ > 0) {
    p.q_normed.assign(static_cast<std::size_t>(t * q_rank_), 0.0f);
    parallel_for(context, t, 16, [&](std::int64_t begin, std::int64_t end) {
      kernels::cpu::rmsnorm_forward(s.q_latent.data() + begin * q_rank_, weight_[q_norm_],
                                    p.q_normed.data() + begin * q_rank_, s.q_rstd.data() + begin,
                                    end - begin, q_rank_, eps_);
    });
    TROUPE_TRY(linear_forward(context, p.q_normed.data(), q_rank_, weight_[q_b_], p.q.data(), q_out,
                              t, q_rank_, q_out, false, error));
  } else {
    TROUPE_TRY(linear_forward(context, s.x, hidden_, weight_[q_proj_], p.q.data(), q_out, t,
                              hidden_, q_out, false, error));
  }
  // Keys and values: normalise the latent, rotate the shared rope key.
  const std::int64_t latent_width = kv_rank_ + rope_;
  p.kv_normed.assign(static_cast<std::size_t>(t * kv_rank_), 0.0f);
  p.rope_key.assign(static_cast<std::size_t>(t * rope_), 0.0f);
  parallel_for(context, t, 16, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      kernels::cpu::rmsnorm_forward(s.kv_latent.data() + row * latent_width, weight_[kv_norm_],
                                    p.kv_normed.data() + row * kv_rank_, s.kv_rstd.data() + row, 1,
                                    kv_rank_, eps_);
      std::memcpy(p.rope_key.data() + row * rope_,
                  s.kv_latent.data() + row * latent_width + kv_rank_,
                  static_cast<std::size_t>(rope_) * sizeof(float));
    }
  });
  ensure_rope_tables(s.shape.length);
  kernels::cpu::rope_rotate(p.q.data() + nope_, t * heads_, qk_dim_, rope_, heads_, s.shape.length,
                            cos_.data(), sin_.data(), +1);
  kernels::cpu::rope_rotate(p.rope_key.data(), t, rope_, rope_, 1, s.shape.length, cos_.data(),
                            sin_.data(), +1);
  if (up_project_kv) {
    const std::int64_t kv_out = heads_ * (nope_ + v_dim_);
    p.kv.assign(static_cast<std::size_t>(t * kv_out), 0.0f);
    TROUPE_TRY(linear_forward(context, p.kv_normed.data(), kv_rank_, weight_[kv_b_], p.kv.data(),
                              kv_out, t, kv_rank_, kv_out, false, error));
  }
  return TROUPE_STATUS_OK;
}

void mla_layer::attend_naive(const troupe_exec_context* context, saved_state& s,
                             const projections& p) {
  const std::int64_t length = s.shape.length;
  const std::int64_t kv_stride = heads_ * (nope_ + v_dim_);
  parallel_for(context, s.shape.batch * heads_, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> keys(static_cast<std::size_t>(length * qk_dim_));
    std::vector<float> scratch(
        static_cast<std::size_t>(kernels::cpu::attention_forward_scratch(length)));
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t b = task / heads_, h = task % heads_;
      const std::int64_t first = b * length;
      for (std::int64_t i = 0; i < length; ++i) {  // k_h = [k_nope_h, rope key]
        std::memcpy(keys.data() + i * qk_dim_,
                    p.kv.data() + (first + i) * kv_stride + h * (nope_ + v_dim_),
                    static_cast<std::size_t>(nope_) * sizeof(float));
        std::memcpy(keys.data() + i * qk_dim_ + nope_, p.rope_key.data() + (first + i) * rope_,
                    static_cast<std::size_t>(rope_) * sizeof(float));
      }
      kernels::cpu::attention_shape shape{length,  qk_dim_,   v_dim_,          heads_ * qk_dim_,
                                          qk_dim_, kv_stride, heads_ * v_dim_, scale_};
      kernels::cpu::causal_attention_forward(
          shape, p.q.data() + first * heads_ * qk_dim_ + h * qk_dim_, keys.data(),
          p.kv.data() + first * kv_stride + h * (nope_ + v_dim_) + nope_,
          s.attention.data() + first * heads_ * v_dim_ + h * v_dim_, s.lse.data() + task * length,
          scratch.data());
    }
  });
}

void mla_layer::attend_absorbed(const troupe_exec_context* context, saved_state& s,
                                const projections& p) {
  // NOTES: per head, W_UK (the k_nope rows of kv_b) folds into the query and W_UV (its v rows)
  // into the output, so attention runs over the cached latents [c, r] of width
  // kv_lora_rank + rope: q' = [q_nope W_UK, q_rope], k' = [c, r], v' = c, o = (P c) W_UV^T.
  const std::int64_t length = s.shape.length;
  const std::int64_t width = kv_rank_ + rope_;
  const float* kv_b = weight_[kv_b_];
  parallel_for(context, s.shape.batch * heads_, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> queries(static_cast<std::size_t>(length * width));
    std::vector<float> keys(static_cast<std::size_t>(length * width));
    std::vector<float> latent_out(static_cast<std::size_t>(length * kv_rank_));
    std::vector<float> scratch(
        static_cast<std::size_t>(kernels::cpu::attention_forward_scratch(length)));
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t b = task / heads_, h = task % heads_;
      const std::int64_t first = b * length;
      const float* w_uk = kv_b + h * (nope_ + v_dim_) * kv_rank_;  // [nope, kv_rank]
      const float* w_uv = w_uk + nope_ * kv_rank_;                 // [v_dim, kv_rank]
      // q_latent = q_nope_h W_UK  -> queries[:, :kv_rank]
      kernels::cpu::sgemm(
          {false, false, length, kv_rank_, nope_, heads_ * qk_dim_, kv_rank_, width}, 1.0f,
          p.q.data() + first * heads_ * qk_dim_ + h * qk_dim_, w_uk, 0.0f, queries.data());
      for (std::int64_t i = 0; i < length; ++i) {
        std::memcpy(queries.data() + i * width + kv_rank_,
                    p.q.data() + (first + i) * heads_ * qk_dim_ + h * qk_dim_ + nope_,
                    static_cast<std::size_t>(rope_) * sizeof(float));
        std::memcpy(keys.data() + i * width, p.kv_normed.data() + (first + i) * kv_rank_,
                    static_cast<std::size_t>(kv_rank_) * sizeof(float));
        std::memcpy(keys.data() + i * width + kv_rank_, p.rope_key.data() + (first + i) * rope_,
                    static_cast<std::size_t>(rope_) * sizeof(float));
      }
      kernels::cpu::attention_shape shape{length, width, kv_rank_, width,
                                          width,  width, kv_rank_, scale_};
      kernels::cpu::causal_attention_forward(shape, queries.data(), keys.data(), keys.data(),
                                             latent_out.data(), s.lse.data() + task * length,
                                             scratch.data());
      // o_h = latent_out W_UV^T
      kernels::cpu::sgemm(
          {false, true, length, v_dim_, kv_rank_, kv_rank_, kv_rank_, heads_ * v_dim_}, 1.0f,
          latent_out.data(), w_uv, 0.0f, s.attention.data() + first * heads_ * v_dim_ + h * v_dim_);
    }
  });
}

troupe_status mla_layer::forward(const troupe_exec_context* context, std::int64_t micro_batch,
                                 const DLTensor& x, const DLTensor& y, troupe_error* error) {
  if (weight_.empty()) return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "forward before bind");
  activation_shape shape;
  TROUPE_TRY(check_activation(x, hidden_, "the attention input", shape, error));
  activation_shape out_shape;
  TROUPE_TRY(check_activation(y, hidden_, "the attention output", out_shape, error));
  if (out_shape.batch != shape.batch || out_shape.length != shape.length)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the output's shape differs from the input's");
  saved_state* s = saved_.start(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const troupe_status status = guarded(error, [&] {
    s->x = data_of(x);
    s->shape = shape;
    const std::int64_t t = shape.tokens();
    if (q_rank_ > 0) {
      s->q_latent.assign(static_cast<std::size_t>(t * q_rank_), 0.0f);
      s->q_rstd.assign(static_cast<std::size_t>(t), 0.0f);
      TROUPE_TRY(linear_forward(context, s->x, hidden_, weight_[q_a_], s->q_latent.data(), q_rank_,
                                t, hidden_, q_rank_, false, error));
    }
    s->kv_latent.assign(static_cast<std::size_t>(t * (kv_rank_ + rope_)), 0.0f);
    s->kv_rstd.assign(static_cast<std::size_t>(t), 0.0f);
    TROUPE_TRY(linear_forward(context, s->x, hidden_, weight_[kv_a_], s->kv_latent.data(),
                              kv_rank_ + rope_, t, hidden_, kv_rank_ + rope_, false, error));
    projections p;
    TROUPE_TRY(project(context, *s, p, path_ == mla_path::naive, error));
    s->attention.assign(static_cast<std::size_t>(t * heads_ * v_dim_), 0.0f);
    s->lse.assign(static_cast<std::size_t>(shape.batch * heads_ * shape.length), 0.0f);
    if (path_ == mla_path::naive)
      attend_naive(context, *s, p);
    else
      attend_absorbed(context, *s, p);
    return linear_forward(context, s->attention.data(), heads_ * v_dim_, weight_[o_proj_],
                          data_of(y), hidden_, t, heads_ * v_dim_, hidden_, false, error);
  });
  if (status != TROUPE_STATUS_OK) saved_.release(micro_batch);
  return status;
}

troupe_status mla_layer::backward_input(const troupe_exec_context* context, saved_state& s,
                                        const float* dy, float* dx, troupe_error* error) {
  const std::int64_t t = s.shape.tokens(), length = s.shape.length;
  const std::int64_t q_out = heads_ * qk_dim_, kv_out = heads_ * (nope_ + v_dim_),
                     o_width = heads_ * v_dim_;
  s.d_output.assign(dy, dy + t * hidden_);
  // dO = dY W_o.
  std::vector<float> d_attention(static_cast<std::size_t>(t * o_width), 0.0f);
  TROUPE_TRY(linear_backward(context, dy, hidden_, nullptr, 0, weight_[o_proj_], d_attention.data(),
                             o_width, nullptr, t, o_width, hidden_, error));
  // Recompute the up-projections.
  projections p;
  TROUPE_TRY(project(context, s, p, true, error));
  // Attention backward per (sequence, head); the rope key's gradient is summed over heads.
  s.d_q.assign(static_cast<std::size_t>(t * q_out), 0.0f);
  s.d_kv.assign(static_cast<std::size_t>(t * kv_out), 0.0f);
  std::vector<float> d_rope_heads(static_cast<std::size_t>(heads_ * t * rope_), 0.0f);
  attention_backward(context, s, p, d_attention, d_rope_heads);
  // Undo the rotations (rotate by the negative angle).
  kernels::cpu::rope_rotate(s.d_q.data() + nope_, t * heads_, qk_dim_, rope_, heads_, length,
                            cos_.data(), sin_.data(), -1);
  TROUPE_TRY(kv_backward_input(context, s, d_rope_heads, dx, error));
  TROUPE_TRY(query_backward_input(context, s, p, dx, error));
  s.kv_normed = std::move(p.kv_normed);
  return TROUPE_STATUS_OK;
}

void mla_layer::attention_backward(const troupe_exec_context* context, saved_state& s,
                                   const projections& p, const std::vector<float>& d_attention,
                                   std::vector<float>& d_rope_heads) {
  const std::int64_t t = s.shape.tokens(), length = s.shape.length;
  const std::int64_t q_out = heads_ * qk_dim_, kv_out = heads_ * (nope_ + v_dim_),
                     o_width = heads_ * v_dim_;
  parallel_for(context, s.shape.batch * heads_, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<float> keys(static_cast<std::size_t>(length * qk_dim_));
    std::vector<float> d_keys(static_cast<std::size_t>(length * qk_dim_));
    std::vector<float> scratch(
        static_cast<std::size_t>(kernels::cpu::attention_backward_scratch(length)));
    for (std::int64_t task = begin; task < end; ++task) {
      const std::int64_t b = task / heads_, h = task % heads_, first = b * length;
      for (std::int64_t i = 0; i < length; ++i) {
        std::memcpy(keys.data() + i * qk_dim_,
                    p.kv.data() + (first + i) * kv_out + h * (nope_ + v_dim_),
                    static_cast<std::size_t>(nope_) * sizeof(float));
        std::memcpy(keys.data() + i * qk_dim_ + nope_, p.rope_key.data() + (first + i) * rope_,
                    static_cast<std::size_t>(rope_) * sizeof(float));
      }
      kernels::cpu::attention_shape shape{length,  qk_dim_, v_dim_,  q_out,
                                          qk_dim_, kv_out,  o_width, scale_};
      // dV goes straight into d_kv's v columns (stride kv_out), dQ into d_q.
      kernels::cpu::causal_attention_backward(
          shape, p.q.data() + first * q_out + h * qk_dim_, keys.data(),
          p.kv.data() + first * kv_out + h * (nope_ + v_dim_) + nope_,
          s.attention.data() + first * o_width + h * v_dim_,
          d_attention.data() + first * o_width + h * v_dim_, s.lse.data() + task * length,
          s.d_q.data() + first * q_out + h * qk_dim_, d_keys.data(),
          s.d_kv.data() + first * kv_out + h * (nope_ + v_dim_) + nope_, scratch.data());
      for (std::int64_t i = 0; i < length; ++i) {
        std::memcpy(s.d_kv.data() + (first + i) * kv_out + h * (nope_ + v_dim_),
                    d_keys.data() + i * qk_dim_, static_cast<std::size_t>(nope_) * sizeof(float));
        std::memcpy(d_rope_heads.data() + (h * t + first + i) * rope_,
                    d_keys.data() + i * qk_dim_ + nope_,
                    static_cast<std::size_t>(rope_) * sizeof(float));
      }
    }
  });
}

troupe_status mla_layer::kv_backward_input(const troupe_exec_context* context, saved_state& s,
                                           const std::vector<float>& d_rope_heads, float* dx,
                                           troupe_error* error) {
  const std::int64_t t = s.shape.tokens(), length = s.shape.length;
  const std::int64_t kv_out = heads_ * (nope_ + v_dim_);
  const std::int64_t latent_width = kv_rank_ + rope_;
  s.d_kv_latent.assign(static_cast<std::size_t>(t * latent_width), 0.0f);
  std::vector<float> d_rope(static_cast<std::size_t>(t * rope_), 0.0f);
  for (std::int64_t h = 0; h < heads_; ++h)
    for (std::int64_t i = 0; i < t * rope_; ++i)
      d_rope[static_cast<std::size_t>(i)] +=
          d_rope_heads[static_cast<std::size_t>(h * t * rope_ + i)];
  kernels::cpu::rope_rotate(d_rope.data(), t, rope_, rope_, 1, length, cos_.data(), sin_.data(),
                            -1);
  // Back through kv_b (input part) and the latent norm.
  std::vector<float> d_kv_normed(static_cast<std::size_t>(t * kv_rank_), 0.0f);
  TROUPE_TRY(linear_backward(context, s.d_kv.data(), kv_out, nullptr, 0, weight_[kv_b_],
                             d_kv_normed.data(), kv_rank_, nullptr, t, kv_rank_, kv_out, error));
  for (std::int64_t row = 0; row < t; ++row) {
    kernels::cpu::rmsnorm_backward(
        d_kv_normed.data() + row * kv_rank_, s.kv_latent.data() + row * latent_width,
        weight_[kv_norm_], s.kv_rstd.data() + row, s.d_kv_latent.data() + row * latent_width,
        grad_[kv_norm_], 1, kv_rank_);
    std::memcpy(s.d_kv_latent.data() + row * latent_width + kv_rank_, d_rope.data() + row * rope_,
                static_cast<std::size_t>(rope_) * sizeof(float));
  }
  return linear_backward(context, s.d_kv_latent.data(), latent_width, nullptr, 0, weight_[kv_a_],
                         dx, hidden_, nullptr, t, hidden_, latent_width, error);
}

troupe_status mla_layer::query_backward_input(const troupe_exec_context* context, saved_state& s,
                                              projections& p, float* dx, troupe_error* error) {
  const std::int64_t t = s.shape.tokens();
  const std::int64_t q_out = heads_ * qk_dim_;
  if (q_rank_ > 0) {
    std::vector<float> d_q_normed(static_cast<std::size_t>(t * q_rank_), 0.0f);
    TROUPE_TRY(linear_backward(context, s.d_q.data(), q_out, nullptr, 0, weight_[q_b_],
                               d_q_normed.data(), q_rank_, nullptr, t, q_rank_, q_out, error));
    s.d_q_latent.assign(static_cast<std::size_t>(t * q_rank_), 0.0f);
    kernels::cpu::rmsnorm_backward(d_q_normed.data(), s.q_latent.data(), weight_[q_norm_],
                                   s.q_rstd.data(), s.d_q_latent.data(), grad_[q_norm_], t,
                                   q_rank_);
    TROUPE_TRY(linear_backward(context, s.d_q_latent.data(), q_rank_, nullptr, 0, weight_[q_a_], dx,
                               hidden_, nullptr, t, hidden_, q_rank_, error));
    s.q_normed = std::move(p.q_normed);
  } else {
    TROUPE_TRY(linear_backward(context, s.d_q.data(), q_out, nullptr, 0, weight_[q_proj_], dx,
                               hidden_, nullptr, t, hidden_, q_out, error));
  }
  return TROUPE_STATUS_OK;
}

troupe_status mla_layer::backward_weight(const troupe_exec_context* context, saved_state& s,
                                         troupe_error* error) {
  const std::int64_t t = s.shape.tokens();
  const std::int64_t q_out = heads_ * qk_dim_, kv_out = heads_ * (nope_ + v_dim_),
                     o_width = heads_ * v_dim_;
  // dW += dY^T X for every projection, from the gradients the input part kept.
  TROUPE_TRY(linear_backward(context, s.d_output.data(), hidden_, s.attention.data(), o_width,
                             weight_[o_proj_], nullptr, 0, grad_[o_proj_], t, o_width, hidden_,
                             error));
  TROUPE_TRY(linear_backward(context, s.d_kv.data(), kv_out, s.kv_normed.data(), kv_rank_,
                             weight_[kv_b_], nullptr, 0, grad_[kv_b_], t, kv_rank_, kv_out, error));
  TROUPE_TRY(linear_backward(context, s.d_kv_latent.data(), kv_rank_ + rope_, s.x, hidden_,
                             weight_[kv_a_], nullptr, 0, grad_[kv_a_], t, hidden_, kv_rank_ + rope_,
                             error));
  if (q_rank_ > 0) {
    TROUPE_TRY(linear_backward(context, s.d_q.data(), q_out, s.q_normed.data(), q_rank_,
                               weight_[q_b_], nullptr, 0, grad_[q_b_], t, q_rank_, q_out, error));
    TROUPE_TRY(linear_backward(context, s.d_q_latent.data(), q_rank_, s.x, hidden_, weight_[q_a_],
                               nullptr, 0, grad_[q_a_], t, hidden_, q_rank_, error));
  } else {
    TROUPE_TRY(linear_backward(context, s.d_q.data(), q_out, s.x, hidden_, weight_[q_proj_],
                               nullptr, 0, grad_[q_proj_], t, hidden_, q_out, error));
  }
  return TROUPE_STATUS_OK;
}

troupe_status mla_layer::backward(const troupe_exec_context* context, std::int64_t micro_batch,
                                  troupe_backward_part part, const DLTensor* dy, const DLTensor* dx,
                                  troupe_error* error) {
  if (path_ == mla_path::absorbed)
    return fail(error, TROUPE_STATUS_UNSUPPORTED,
                "the absorbed path is the inference layout; train with the naive path (plugin "
                "option \"path\")");
  return saved_.backward(
      micro_batch, part, error,
      [&](saved_state& s) -> troupe_status {
        if (dy == nullptr || dx == nullptr)
          return fail(error, TROUPE_STATUS_INVALID_ARGUMENT, "backward needs dy and dx");
        activation_shape shape;
        TROUPE_TRY(check_activation(*dy, hidden_, "dy", shape, error));
        TROUPE_TRY(check_activation(*dx, hidden_, "dx", shape, error));
        return backward_input(context, s, data_of(*dy), data_of(*dx), error);
      },
      [&](saved_state& s) { return backward_weight(context, s, error); });
}

const std::string& mla_layer::statistics() {
  std::size_t saved = 0, recomputed = 0;
  saved_.for_each([&](std::int64_t, const saved_state& s) {
    saved += s.bytes();
    // What storing the up-projections would add: q, k (nope and the broadcast rope key) and v.
    recomputed +=
        static_cast<std::size_t>(s.shape.tokens() * heads_ * (qk_dim_ + qk_dim_ + v_dim_)) *
        sizeof(float);
  });
  statistics_ = fmt::format(
      R"({{"micro_batches": {}, "saved_activation_bytes": {}, "recomputed_activation_bytes": {}}})",
      saved_.size(), saved, recomputed);
  return statistics_;
}

}  // namespace troupe::plugin
