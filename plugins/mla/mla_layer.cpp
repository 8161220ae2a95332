#include "plugins/mla/mla_layer.hpp"

#include <cmath>
#include <cstring>
#include <initializer_list>

#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/linear.hpp"
#include "kernels/cpu/rope.hpp"

namespace troupe::plugin {

namespace {

using kernels::linear_backward;
using kernels::linear_forward;

/// YaRN's attention-temperature correction: 0.1 * m * ln(factor) + 1 (1 without scaling).
double yarn_mscale(double factor, double m) {
  return factor <= 1.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

}  // namespace

std::size_t mla_layer::saved_state::bytes() const {
  return q_latent.bytes() + q_rstd.bytes() + kv_latent.bytes() + kv_rstd.bytes() +
         attention.bytes() + lse.bytes() + q.bytes() + x16.bytes() + attention16.bytes() +
         d_output16.bytes() + d_q16.bytes() + d_q_latent16.bytes() + d_kv16.bytes() +
         d_kv_latent16.bytes() + q_normed16.bytes() + kv_normed16.bytes() + d_output.bytes() +
         d_q.bytes() + d_q_latent.bytes() + d_kv.bytes() + d_kv_latent.bytes() + q_normed.bytes() +
         kv_normed.bytes();
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
  rope_table_ = rope_table(
      kernels::cpu::rope_inverse_frequencies(rope_, c.rope_theta, c.yarn ? &yarn : nullptr));

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
  if (count > 0) weights_on_ = params[0].device;
  copies_.reset();
  return TROUPE_STATUS_OK;
}

bool mla_layer::bf16_path(const troupe_exec_context* context) const {
  const auto eights = [](std::initializer_list<std::int64_t> widths) {
    for (const std::int64_t w : widths)
      if (w % 8 != 0) return false;
    return true;
  };
  return on_gpu(context) && path_ == mla_path::naive && context->gemm != nullptr &&
         context->gemm->name != nullptr &&
         std::strcmp(context->gemm->name, TROUPE_GEMM_CUBLASLT_BF16) == 0 &&
         context->struct_size >= offsetof(troupe_exec_context, parameter_version) +
                                     sizeof(context->parameter_version) &&
         context->parameter_version != nullptr &&
         eights({hidden_, q_rank_, kv_rank_, kv_rank_ + rope_, heads_ * qk_dim_,
                 heads_ * (nope_ + v_dim_), heads_ * v_dim_});
}

void mla_layer::refresh_copies(const troupe_exec_context* context) {
  const auto& specs = parameters_.specs();
  if (copies_.unplaced()) {
    offset16_.assign(specs.size(), -1);
    std::int64_t total = 0;
    for (std::size_t i = 0; i < specs.size(); ++i)
      if (specs[i].ndim == 2) {
        offset16_[i] = total;
        total += specs[i].shape[0] * specs[i].shape[1];
      }
    weights16_.allocate(context, static_cast<std::size_t>(total));
    std::vector<bf16_weight_copies::piece> pieces;
    for (std::size_t i = 0; i < specs.size(); ++i)
      if (offset16_[i] >= 0)
        pieces.push_back(
            {weight_[i], weights16_.data() + offset16_[i], specs[i].shape[0] * specs[i].shape[1]});
    copies_.keep(context, pieces);
  }
  if (!copies_.stale(context)) return;
  for (std::size_t i = 0; i < specs.size(); ++i)
    if (offset16_[i] >= 0)
      ops::round_to_bf16(context, weight_[i], weights16_.data() + offset16_[i],
                         specs[i].shape[0] * specs[i].shape[1]);
}

void mla_layer::round_into(const troupe_exec_context* context, const float* x, std::int64_t count,
                           device_array<std::uint16_t>& out) {
  out.allocate(context, static_cast<std::size_t>(count));
  ops::round_to_bf16(context, x, out.data(), count);
}

troupe_status mla_layer::gemm_forward(const troupe_exec_context* context, bool bf16, operand x,
                                      std::size_t w, float* y, std::int64_t ldy, std::int64_t t,
                                      std::int64_t in, std::int64_t out, troupe_error* error) {
  if (!bf16)
    return linear_forward(context, x.f32, x.ld, weight_[w], y, ldy, t, in, out, false, error);
  ops::gemm_bf16(context, false, true, t, out, in, 1.0f, x.bf16, in,
                 weights16_.data() + offset16_[w], in, 0.0f, y, ldy);
  return TROUPE_STATUS_OK;
}

troupe_status mla_layer::gemm_input_gradient(const troupe_exec_context* context, bool bf16,
                                             operand dy, std::size_t w, float* dx,
                                             std::int64_t lddx, std::int64_t t, std::int64_t in,
                                             std::int64_t out, bool accumulate,
                                             troupe_error* error) {
  if (!bf16)
    return linear_backward(context, dy.f32, dy.ld, nullptr, 0, weight_[w], dx, lddx, nullptr, t, in,
                           out, error, accumulate);
  ops::gemm_bf16(context, false, false, t, in, out, 1.0f, dy.bf16, out,
                 weights16_.data() + offset16_[w], in, accumulate ? 1.0f : 0.0f, dx, lddx);
  return TROUPE_STATUS_OK;
}

troupe_status mla_layer::gemm_weight_gradient(const troupe_exec_context* context, bool bf16,
                                              operand dy, operand x, std::size_t w, std::int64_t t,
                                              std::int64_t in, std::int64_t out,
                                              troupe_error* error) {
  if (!bf16)
    return linear_backward(context, dy.f32, dy.ld, x.f32, x.ld, weight_[w], nullptr, 0, grad_[w], t,
                           in, out, error);
  if (grad_[w] != nullptr)
    ops::gemm_bf16(context, true, false, out, in, t, 1.0f, dy.bf16, out, x.bf16, in, 1.0f, grad_[w],
                   in);
  return TROUPE_STATUS_OK;
}

troupe_status mla_layer::project(const troupe_exec_context* context, saved_state& s, projections& p,
                                 bool up_project_kv, troupe_error* error, bool queries) {
  const std::int64_t t = s.shape.tokens();
  const std::int64_t q_out = heads_ * qk_dim_;
  // Queries.
  if (queries) {
    p.q.allocate(context, static_cast<std::size_t>(t * q_out));
    if (q_rank_ > 0) {
      p.q_normed.allocate(context, static_cast<std::size_t>(t * q_rank_));
      ops::rmsnorm_forward(context, s.q_latent.data(), q_rank_, weight_[q_norm_], p.q_normed.data(),
                           q_rank_, s.q_rstd.data(), t, q_rank_, eps_);
      if (s.bf16) round_into(context, p.q_normed.data(), t * q_rank_, p.q_normed16);
      TROUPE_TRY(gemm_forward(context, s.bf16, {p.q_normed.data(), q_rank_, p.q_normed16.data()},
                              q_b_, p.q.data(), q_out, t, q_rank_, q_out, error));
    } else {
      TROUPE_TRY(gemm_forward(context, s.bf16, {s.x, hidden_, s.x16.data()}, q_proj_, p.q.data(),
                              q_out, t, hidden_, q_out, error));
    }
  }
  // Keys and values: normalise the latent, rotate the shared rope key.
  const std::int64_t latent_width = kv_rank_ + rope_;
  p.kv_normed.allocate(context, static_cast<std::size_t>(t * kv_rank_));
  p.rope_key.allocate(context, static_cast<std::size_t>(t * rope_));
  ops::rmsnorm_forward(context, s.kv_latent.data(), latent_width, weight_[kv_norm_],
                       p.kv_normed.data(), kv_rank_, s.kv_rstd.data(), t, kv_rank_, eps_);
  ops::copy_2d(context, p.rope_key.data(), rope_, s.kv_latent.data() + kv_rank_, latent_width, t,
               rope_);
  if (queries)
    ops::rope_rotate(context, p.q.data() + nope_, t * heads_, qk_dim_, rope_, heads_,
                     s.shape.length, rope_table_, +1);
  ops::rope_rotate(context, p.rope_key.data(), t, rope_, rope_, 1, s.shape.length, rope_table_, +1);
  if (up_project_kv) {
    const std::int64_t kv_out = heads_ * (nope_ + v_dim_);
    p.kv.allocate(context, static_cast<std::size_t>(t * kv_out));
    if (s.bf16) round_into(context, p.kv_normed.data(), t * kv_rank_, p.kv_normed16);
    TROUPE_TRY(gemm_forward(context, s.bf16, {p.kv_normed.data(), kv_rank_, p.kv_normed16.data()},
                            kv_b_, p.kv.data(), kv_out, t, kv_rank_, kv_out, error));
  }
  return TROUPE_STATUS_OK;
}

attention_problem mla_layer::problem(const activation_shape& shape) const {
  return {shape.batch, heads_, shape.length, qk_dim_, rope_, v_dim_, scale_};
}

void mla_layer::attend_naive(const troupe_exec_context* context, saved_state& s,
                             const projections& p) {
  // Per (sequence, head): q_h, k_h = [k_nope_h, the shared rope key] (never assembled on the
  // GPU), v_h; o and lse into the saved state.
  const std::int64_t length = s.shape.length;
  const std::int64_t q_out = heads_ * qk_dim_, kv_out = heads_ * (nope_ + v_dim_),
                     o_width = heads_ * v_dim_;
  ops::attention_forward(context, problem(s.shape), {p.q.data(), length * q_out, qk_dim_, q_out},
                         {p.kv.data(), length * kv_out, nope_ + v_dim_, kv_out},
                         {p.rope_key.data(), length * rope_, 0, rope_},
                         {p.kv.data() + nope_, length * kv_out, nope_ + v_dim_, kv_out},
                         {s.attention.data(), length * o_width, v_dim_, o_width}, s.lse.data());
}

void mla_layer::attend_absorbed(const troupe_exec_context* context, saved_state& s,
                                const projections& p) {
  // NOTES: per head, W_UK (the k_nope rows of kv_b) folds into the query and W_UV (its v rows)
  // into the output, so attention runs over the cached latents [c, r] of width
  // kv_lora_rank + rope: q' = [q_nope W_UK, q_rope], k' = [c, r], v' = c, o = (P c) W_UV^T.
  if (on_gpu(context))
    throw std::runtime_error(
        "the absorbed path (the inference layout) runs on the CPU only; use the naive path on a "
        "GPU");
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
  TROUPE_TRY(check_activation(x, hidden_, "the attention input", shape, error, context));
  if (weights_on_.device_type != context->device.device_type ||
      weights_on_.device_id != context->device.device_id)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the layer's parameters are on {}, but the call computes on {}",
                device_name(weights_on_), device_name(context->device));
  activation_shape out_shape;
  TROUPE_TRY(check_activation(y, hidden_, "the attention output", out_shape, error, context));
  if (out_shape.batch != shape.batch || out_shape.length != shape.length)
    return fail(error, TROUPE_STATUS_INVALID_ARGUMENT,
                "the output's shape differs from the input's");
  saved_state* s = saved_.start(micro_batch, error);
  if (s == nullptr) return TROUPE_STATUS_INVALID_ARGUMENT;
  const troupe_status status = guarded(error, [&] {
    s->x = data_of(x);
    s->shape = shape;
    const std::int64_t t = shape.tokens();
    s->bf16 = bf16_path(context);
    if (s->bf16) {
      refresh_copies(context);
      round_into(context, s->x, t * hidden_, s->x16);
    }
    const operand input{s->x, hidden_, s->x16.data()};
    if (q_rank_ > 0) {
      s->q_latent.allocate(context, static_cast<std::size_t>(t * q_rank_));
      s->q_rstd.allocate(context, static_cast<std::size_t>(t));
      TROUPE_TRY(gemm_forward(context, s->bf16, input, q_a_, s->q_latent.data(), q_rank_, t,
                              hidden_, q_rank_, error));
    }
    s->kv_latent.allocate(context, static_cast<std::size_t>(t * (kv_rank_ + rope_)));
    s->kv_rstd.allocate(context, static_cast<std::size_t>(t));
    TROUPE_TRY(gemm_forward(context, s->bf16, input, kv_a_, s->kv_latent.data(), kv_rank_ + rope_,
                            t, hidden_, kv_rank_ + rope_, error));
    projections p;
    TROUPE_TRY(project(context, *s, p, path_ == mla_path::naive, error));
    s->attention.allocate(context, static_cast<std::size_t>(t * heads_ * v_dim_));
    s->lse.allocate(context, static_cast<std::size_t>(shape.batch * heads_ * shape.length));
    if (path_ == mla_path::naive)
      attend_naive(context, *s, p);
    else
      attend_absorbed(context, *s, p);
    if (q_rank_ == 0 && path_ == mla_path::naive) s->q = std::move(p.q);  // saved_state says why
    if (s->bf16) round_into(context, s->attention.data(), t * heads_ * v_dim_, s->attention16);
    return gemm_forward(context, s->bf16,
                        {s->attention.data(), heads_ * v_dim_, s->attention16.data()}, o_proj_,
                        data_of(y), hidden_, t, heads_ * v_dim_, hidden_, error);
  });
  if (status != TROUPE_STATUS_OK) saved_.release(micro_batch);
  return status;
}

troupe_status mla_layer::backward_input(const troupe_exec_context* context, saved_state& s,
                                        const float* dy, float* dx, troupe_error* error) {
  const std::int64_t t = s.shape.tokens(), length = s.shape.length;
  const std::int64_t q_out = heads_ * qk_dim_, kv_out = heads_ * (nope_ + v_dim_),
                     o_width = heads_ * v_dim_;
  if (s.bf16) {
    refresh_copies(context);
    round_into(context, dy, t * hidden_, s.d_output16);
  } else {
    s.d_output.assign_copy(context, dy, static_cast<std::size_t>(t * hidden_));
  }
  // dO = dY W_o.
  buffer d_attention;
  d_attention.allocate(context, static_cast<std::size_t>(t * o_width));
  TROUPE_TRY(gemm_input_gradient(context, s.bf16, {dy, hidden_, s.d_output16.data()}, o_proj_,
                                 d_attention.data(), o_width, t, o_width, hidden_, false, error));
  // Recompute the up-projections (the queries too where they were not kept).
  projections p;
  TROUPE_TRY(project(context, s, p, true, error, s.q.empty()));
  if (p.q.empty()) p.q = std::move(s.q);
  // Attention backward per (sequence, head); the rope key's gradient is summed over heads.
  // Written whole by attention_backward (no zero fills: 256 MB a layer on the medium config).
  s.d_q.allocate(context, static_cast<std::size_t>(t * q_out));
  s.d_kv.allocate(context, static_cast<std::size_t>(t * kv_out));
  buffer d_rope_heads;
  d_rope_heads.allocate(context, static_cast<std::size_t>(heads_ * t * rope_));
  attention_backward(context, s, p, d_attention, d_rope_heads);
  // Undo the rotations (rotate by the negative angle).
  ops::rope_rotate(context, s.d_q.data() + nope_, t * heads_, qk_dim_, rope_, heads_, length,
                   rope_table_, -1);
  TROUPE_TRY(kv_backward_input(context, s, d_rope_heads, dx, error));
  TROUPE_TRY(query_backward_input(context, s, p, dx, error));
  s.kv_normed = std::move(p.kv_normed);
  s.kv_normed16 = std::move(p.kv_normed16);
  return TROUPE_STATUS_OK;
}

void mla_layer::attention_backward(const troupe_exec_context* context, saved_state& s,
                                   const projections& p, const buffer& d_attention,
                                   buffer& d_rope_heads) {
  // dV goes straight into d_kv's v columns and dK_nope into its k columns, dQ into d_q, each
  // head's rope-key gradient into d_rope_heads [heads, T, rope].
  const std::int64_t t = s.shape.tokens(), length = s.shape.length;
  const std::int64_t q_out = heads_ * qk_dim_, kv_out = heads_ * (nope_ + v_dim_),
                     o_width = heads_ * v_dim_;
  const strided_out kv_slots{s.d_kv.data(), length * kv_out, nope_ + v_dim_, kv_out};
  ops::attention_backward(context, problem(s.shape), {p.q.data(), length * q_out, qk_dim_, q_out},
                          {p.kv.data(), length * kv_out, nope_ + v_dim_, kv_out},
                          {p.rope_key.data(), length * rope_, 0, rope_},
                          {p.kv.data() + nope_, length * kv_out, nope_ + v_dim_, kv_out},
                          {s.attention.data(), length * o_width, v_dim_, o_width},
                          {d_attention.data(), length * o_width, v_dim_, o_width}, s.lse.data(),
                          {s.d_q.data(), length * q_out, qk_dim_, q_out}, kv_slots,
                          {d_rope_heads.data(), length * rope_, t * rope_, rope_},
                          {s.d_kv.data() + nope_, length * kv_out, nope_ + v_dim_, kv_out});
}

troupe_status mla_layer::kv_backward_input(const troupe_exec_context* context, saved_state& s,
                                           const buffer& d_rope_heads, float* dx,
                                           troupe_error* error) {
  const std::int64_t t = s.shape.tokens(), length = s.shape.length;
  const std::int64_t kv_out = heads_ * (nope_ + v_dim_);
  const std::int64_t latent_width = kv_rank_ + rope_;
  s.d_kv_latent.assign(context, static_cast<std::size_t>(t * latent_width));
  buffer d_rope;
  d_rope.allocate(context, static_cast<std::size_t>(t * rope_));
  ops::sum_slices(context, d_rope_heads.data(), heads_, t * rope_, d_rope.data());
  ops::rope_rotate(context, d_rope.data(), t, rope_, rope_, 1, length, rope_table_, -1);
  // Back through kv_b (input part) and the latent norm.
  buffer d_kv_normed;
  d_kv_normed.allocate(context, static_cast<std::size_t>(t * kv_rank_));
  if (s.bf16) {
    round_into(context, s.d_kv.data(), t * kv_out, s.d_kv16);
    s.d_kv.clear();  // the weight part reads the rounding
  }
  TROUPE_TRY(gemm_input_gradient(context, s.bf16, {s.d_kv.data(), kv_out, s.d_kv16.data()}, kv_b_,
                                 d_kv_normed.data(), kv_rank_, t, kv_rank_, kv_out, false, error));
  ops::rmsnorm_backward(context, d_kv_normed.data(), kv_rank_, s.kv_latent.data(), latent_width,
                        weight_[kv_norm_], s.kv_rstd.data(), s.d_kv_latent.data(), grad_[kv_norm_],
                        t, kv_rank_);
  ops::copy_2d(context, s.d_kv_latent.data() + kv_rank_, latent_width, d_rope.data(), rope_, t,
               rope_);
  if (s.bf16) round_into(context, s.d_kv_latent.data(), t * latent_width, s.d_kv_latent16);
  return gemm_input_gradient(context, s.bf16,
                             {s.d_kv_latent.data(), latent_width, s.d_kv_latent16.data()}, kv_a_,
                             dx, hidden_, t, hidden_, latent_width, true, error);
}

troupe_status mla_layer::query_backward_input(const troupe_exec_context* context, saved_state& s,
                                              projections& p, float* dx, troupe_error* error) {
  const std::int64_t t = s.shape.tokens();
  const std::int64_t q_out = heads_ * qk_dim_;
  if (s.bf16) {
    round_into(context, s.d_q.data(), t * q_out, s.d_q16);
    s.d_q.clear();  // the weight part reads the rounding
  }
  const operand d_q{s.d_q.data(), q_out, s.d_q16.data()};
  if (q_rank_ > 0) {
    buffer d_q_normed;
    d_q_normed.allocate(context, static_cast<std::size_t>(t * q_rank_));
    TROUPE_TRY(gemm_input_gradient(context, s.bf16, d_q, q_b_, d_q_normed.data(), q_rank_, t,
                                   q_rank_, q_out, false, error));
    s.d_q_latent.assign(context, static_cast<std::size_t>(t * q_rank_));
    ops::rmsnorm_backward(context, d_q_normed.data(), q_rank_, s.q_latent.data(), q_rank_,
                          weight_[q_norm_], s.q_rstd.data(), s.d_q_latent.data(), grad_[q_norm_], t,
                          q_rank_);
    if (s.bf16) round_into(context, s.d_q_latent.data(), t * q_rank_, s.d_q_latent16);
    TROUPE_TRY(gemm_input_gradient(context, s.bf16,
                                   {s.d_q_latent.data(), q_rank_, s.d_q_latent16.data()}, q_a_, dx,
                                   hidden_, t, hidden_, q_rank_, true, error));
    s.q_normed = std::move(p.q_normed);
    s.q_normed16 = std::move(p.q_normed16);
  } else {
    TROUPE_TRY(gemm_input_gradient(context, s.bf16, d_q, q_proj_, dx, hidden_, t, hidden_, q_out,
                                   true, error));
  }
  return TROUPE_STATUS_OK;
}

troupe_status mla_layer::backward_weight(const troupe_exec_context* context, saved_state& s,
                                         troupe_error* error) {
  const std::int64_t t = s.shape.tokens();
  const std::int64_t q_out = heads_ * qk_dim_, kv_out = heads_ * (nope_ + v_dim_),
                     o_width = heads_ * v_dim_;
  // dW += dY^T X for every projection, from the gradients the input part kept.
  const bool bf16 = s.bf16;
  const operand input{s.x, hidden_, s.x16.data()};
  const operand d_q{s.d_q.data(), q_out, s.d_q16.data()};
  TROUPE_TRY(gemm_weight_gradient(context, bf16, {s.d_output.data(), hidden_, s.d_output16.data()},
                                  {s.attention.data(), o_width, s.attention16.data()}, o_proj_, t,
                                  o_width, hidden_, error));
  TROUPE_TRY(gemm_weight_gradient(context, bf16, {s.d_kv.data(), kv_out, s.d_kv16.data()},
                                  {s.kv_normed.data(), kv_rank_, s.kv_normed16.data()}, kv_b_, t,
                                  kv_rank_, kv_out, error));
  TROUPE_TRY(gemm_weight_gradient(context, bf16,
                                  {s.d_kv_latent.data(), kv_rank_ + rope_, s.d_kv_latent16.data()},
                                  input, kv_a_, t, hidden_, kv_rank_ + rope_, error));
  if (q_rank_ > 0) {
    TROUPE_TRY(gemm_weight_gradient(context, bf16, d_q,
                                    {s.q_normed.data(), q_rank_, s.q_normed16.data()}, q_b_, t,
                                    q_rank_, q_out, error));
    TROUPE_TRY(gemm_weight_gradient(context, bf16,
                                    {s.d_q_latent.data(), q_rank_, s.d_q_latent16.data()}, input,
                                    q_a_, t, hidden_, q_rank_, error));
  } else {
    TROUPE_TRY(gemm_weight_gradient(context, bf16, d_q, input, q_proj_, t, hidden_, q_out, error));
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
        TROUPE_TRY(check_activation(*dy, hidden_, "dy", shape, error, context));
        TROUPE_TRY(check_activation(*dx, hidden_, "dx", shape, error, context));
        return backward_input(context, s, data_of(*dy), data_of(*dx), error);
      },
      [&](saved_state& s) { return backward_weight(context, s, error); });
}

const std::string& mla_layer::statistics() {
  std::size_t saved = 0, recomputed = 0;
  saved_.for_each([&](std::int64_t, const saved_state& s) {
    saved += s.bytes();
    // What storing the up-projections would add: q (unless kept), k (nope and the broadcast rope
    // key) and v.
    recomputed +=
        static_cast<std::size_t>(s.shape.tokens() * heads_ * (qk_dim_ + v_dim_)) * sizeof(float) +
        (s.q.empty() ? static_cast<std::size_t>(s.shape.tokens() * heads_ * qk_dim_) * sizeof(float)
                     : 0);
  });
  statistics_ = fmt::format(
      R"({{"micro_batches": {}, "saved_activation_bytes": {}, "recomputed_activation_bytes": {}}})",
      saved_.size(), saved, recomputed);
  return statistics_;
}

}  // namespace troupe::plugin
