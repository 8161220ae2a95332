// Finite-difference checks of every hand-written backward in kernels/ and runtime/layers/:
// RMSNorm, SwiGLU, RoPE, causal attention, the router's gates, the balance loss, cross-entropy,
// the embedding, the output head and the dense FFN (tolerances: support/gradient_check.hpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/cross_entropy.hpp"
#include "kernels/cpu/rmsnorm.hpp"
#include "kernels/cpu/rope.hpp"
#include "kernels/cpu/router.hpp"
#include "kernels/cpu/swiglu.hpp"
#include "kernels/cpu/vector_math.hpp"
#include "runtime/layers/dense_ffn.hpp"
#include "runtime/layers/embedding.hpp"
#include "runtime/layers/output_head.hpp"
#include "tests/support/gradient_check.hpp"

namespace {

using troupe::testing::expect_gradients_match;
namespace k = troupe::kernels::cpu;

// The vectorisable expf SwiGLU uses, against libm in double: within 2 ulp over its range, clamped
// outside it (never inf), NaN kept; the sigmoid saturates to exactly 0 and 1.
TEST(VectorExp, WithinTwoUlpOfLibmAndNeverInfinite) {
  double worst = 0.0;
  for (float x = -87.0f; x < 88.0f; x += 0.00037f) {
    const double reference = std::exp(static_cast<double>(x));
    worst =
        std::max(worst, std::fabs(static_cast<double>(k::vector_exp(x)) - reference) / reference);
  }
  EXPECT_LT(worst, 2.0 * 5.96e-8) << "relative error " << worst;
  EXPECT_EQ(k::vector_exp(0.0f), 1.0f);
  EXPECT_TRUE(std::isfinite(k::vector_exp(1000.0f)));
  EXPECT_GT(k::vector_exp(1000.0f), 1e38f);
  EXPECT_GE(k::vector_exp(-1000.0f), 0.0f);
  EXPECT_LT(k::vector_exp(-1000.0f), 1e-37f);
  EXPECT_TRUE(std::isnan(k::vector_exp(std::nanf(""))));
  EXPECT_EQ(k::vector_sigmoid(200.0f), 1.0f);
  EXPECT_LT(k::vector_sigmoid(-200.0f), 1e-37f);
  EXPECT_NEAR(k::vector_sigmoid(0.3f), 1.0 / (1.0 + std::exp(-0.3)), 1e-7);
}

std::vector<float> random_vector(std::size_t n, std::uint32_t seed, float scale = 1.0f,
                                 float offset = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = offset + normal(rng);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i)
    s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

TEST(KernelGradients, RmsNorm) {
  const std::int64_t rows = 5, dim = 24;
  auto x = random_vector(rows * dim, 1), w = random_vector(dim, 2, 0.2f, 1.0f),
       r = random_vector(rows * dim, 3);
  std::vector<float> y(x.size()), rstd(rows);
  auto loss = [&] {
    k::rmsnorm_forward(x.data(), w.data(), y.data(), rstd.data(), rows, dim, 1e-6f);
    return dot(y, r);
  };
  loss();
  std::vector<float> dx(x.size(), 0.0f), dw(w.size(), 0.0f);
  k::rmsnorm_backward(r.data(), x.data(), w.data(), rstd.data(), dx.data(), dw.data(), rows, dim);
  expect_gradients_match(loss, {{"x", x.data(), dx}, {"weight", w.data(), dw}});
}

TEST(KernelGradients, SwiGlu) {
  const std::int64_t n = 64;
  auto gate = random_vector(n, 4, 2.0f), up = random_vector(n, 5), r = random_vector(n, 6);
  std::vector<float> h(n);
  auto loss = [&] {
    k::swiglu_forward(gate.data(), up.data(), h.data(), n);
    return dot(h, r);
  };
  std::vector<float> dgate(n, 0.0f), dup(n, 0.0f);
  k::swiglu_backward(r.data(), gate.data(), up.data(), dgate.data(), dup.data(), n);
  expect_gradients_match(loss, {{"gate", gate.data(), dgate}, {"up", up.data(), dup}});
}

TEST(KernelGradients, RopeAndItsInverse) {
  const std::int64_t length = 7, heads = 3, dim = 8;
  k::yarn_parameters yarn{4.0, 4, 32.0, 1.0};
  const auto inv = k::rope_inverse_frequencies(dim, 10000.0, &yarn);
  std::vector<float> cos_table(length * dim / 2), sin_table(length * dim / 2);
  k::rope_tables(inv, length, cos_table.data(), sin_table.data());
  auto x = random_vector(length * heads * dim, 7), r = random_vector(x.size(), 8);
  std::vector<float> y;
  auto loss = [&] {
    y = x;
    k::rope_rotate(y.data(), length * heads, dim, dim, heads, length, cos_table.data(),
                   sin_table.data(), +1);
    return dot(y, r);
  };
  std::vector<float> dx = r;
  k::rope_rotate(dx.data(), length * heads, dim, dim, heads, length, cos_table.data(),
                 sin_table.data(), -1);
  expect_gradients_match(loss, {{"x", x.data(), dx}});
  // The inverse undoes the rotation exactly (up to rounding).
  loss();
  k::rope_rotate(y.data(), length * heads, dim, dim, heads, length, cos_table.data(),
                 sin_table.data(), -1);
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-5f);
}

TEST(KernelGradients, CausalAttention) {
  const std::int64_t length = 9, qk = 6, vd = 5;
  auto q = random_vector(length * qk, 9), kk = random_vector(length * qk, 10),
       v = random_vector(length * vd, 11);
  auto r = random_vector(length * vd, 12);
  const k::attention_shape shape{length, qk, vd, qk, qk, vd, vd, 0.4f};
  std::vector<float> o(length * vd), lse(length), scratch(k::attention_backward_scratch(length));
  auto loss = [&] {
    k::causal_attention_forward(shape, q.data(), kk.data(), v.data(), o.data(), lse.data(),
                                scratch.data());
    return dot(o, r);
  };
  loss();
  std::vector<float> dq(q.size()), dk(kk.size()), dv(v.size());
  k::causal_attention_backward(shape, q.data(), kk.data(), v.data(), o.data(), r.data(), lse.data(),
                               dq.data(), dk.data(), dv.data(), scratch.data());
  expect_gradients_match(loss, {{"q", q.data(), dq}, {"k", kk.data(), dk}, {"v", v.data(), dv}});
}

// Sequences longer than the kernel's block of query rows (128): the products skip the masked
// blocks, so forward and backward are checked against attention written out in double over whole
// rows (a finite-difference check at this length would take minutes). Strides wider than the rows
// and a last block of 44 rows. Tolerance 2e-5 of the largest value.
TEST(KernelGradients, CausalAttentionOverSeveralBlocksEqualsDoubleReference) {
  // MLA's widths (qk 96, v 64), so every product takes the GEMM kernels' paths for few rows
  const std::int64_t n = 300, qk = 96, vd = 64, ldq = 99, ldk = 98, ldv = 67, ldo = 65;
  const float scale = 0.3f;
  auto q = random_vector(n * ldq, 21), kk = random_vector(n * ldk, 22),
       v = random_vector(n * ldv, 23), d_o = random_vector(n * ldo, 24);
  const k::attention_shape shape{n, qk, vd, ldq, ldk, ldv, ldo, scale};
  std::vector<float> o(n * ldo), lse(n), scratch(k::attention_backward_scratch(n));
  std::vector<float> dq(n * ldq), dk(n * ldk), dv(n * ldv);
  k::causal_attention_forward(shape, q.data(), kk.data(), v.data(), o.data(), lse.data(),
                              scratch.data());
  k::causal_attention_backward(shape, q.data(), kk.data(), v.data(), o.data(), d_o.data(),
                               lse.data(), dq.data(), dk.data(), dv.data(), scratch.data());
  const std::vector<double> Q(q.begin(), q.end()), K(kk.begin(), kk.end()), V(v.begin(), v.end()),
      DO(d_o.begin(), d_o.end());
  const double scale_d = scale;
  std::vector<double> p(n * n, 0.0), ro(n * vd, 0.0), rdq(n * qk, 0.0), rdk(n * qk, 0.0),
      rdv(n * vd, 0.0);
  for (std::int64_t i = 0; i < n; ++i) {
    double top = -1e300, sum = 0.0;
    for (std::int64_t j = 0; j <= i; ++j) {
      double score = 0.0;
      for (std::int64_t c = 0; c < qk; ++c) score += (Q[i * ldq + c]) * K[j * ldk + c];
      p[i * n + j] = scale_d * score;
      top = std::max(top, p[i * n + j]);
    }
    for (std::int64_t j = 0; j <= i; ++j) sum += p[i * n + j] = std::exp(p[i * n + j] - top);
    for (std::int64_t j = 0; j <= i; ++j) p[i * n + j] /= sum;
    for (std::int64_t j = 0; j <= i; ++j)
      for (std::int64_t c = 0; c < vd; ++c) ro[i * vd + c] += p[i * n + j] * V[j * ldv + c];
    double delta = 0.0;
    for (std::int64_t c = 0; c < vd; ++c) delta += (DO[i * ldo + c]) * ro[i * vd + c];
    for (std::int64_t j = 0; j <= i; ++j) {
      double dp = 0.0;
      for (std::int64_t c = 0; c < vd; ++c) {
        dp += (DO[i * ldo + c]) * V[j * ldv + c];
        rdv[j * vd + c] += p[i * n + j] * DO[i * ldo + c];
      }
      const double ds = scale_d * p[i * n + j] * (dp - delta);
      for (std::int64_t c = 0; c < qk; ++c) {
        rdq[i * qk + c] += ds * K[j * ldk + c];
        rdk[j * qk + c] += ds * Q[i * ldq + c];
      }
    }
  }
  const auto expect_close = [&](const char* what, const std::vector<float>& got, std::int64_t ld,
                                const std::vector<double>& want, std::int64_t width) {
    double largest = 0.0, worst = 0.0;
    for (const double x : want) largest = std::max(largest, std::fabs(x));
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t c = 0; c < width; ++c)
        worst = std::max(worst, std::fabs(double(got[i * ld + c]) - want[i * width + c]));
    EXPECT_LE(worst, 2e-5 * largest) << what << ": worst difference " << worst << " of " << largest;
  };
  expect_close("O", o, ldo, ro, vd);
  expect_close("dQ", dq, ldq, rdq, qk);
  expect_close("dK", dk, ldk, rdk, qk);
  expect_close("dV", dv, ldv, rdv, vd);
}

class RouterGradients : public ::testing::TestWithParam<bool> {
 protected:
  const k::router_shape shape_{8, 2, 1, 3, GetParam(), 2.5f};
  static constexpr std::int64_t sequences_ = 2, length_ = 6, tokens_ = sequences_ * length_;
  std::vector<float> logits_ = random_vector(tokens_ * 8, 13, 1.5f);
  std::vector<float> bias_ = random_vector(8, 14, 0.05f, 0.05f);
  std::vector<float> scores_ = std::vector<float>(tokens_ * 8);
  std::vector<float> gates_ = std::vector<float>(tokens_ * 3);
  std::vector<std::int32_t> selected_ = std::vector<std::int32_t>(tokens_ * 3), baseline_;

  void route() {
    k::router_forward(shape_, logits_.data(), bias_.data(), scores_.data(), selected_.data(),
                      gates_.data(), tokens_);
    if (!baseline_.empty()) {
      EXPECT_EQ(selected_, baseline_) << "the perturbation changed the routing";
    }
  }
};

// The two differentiable paths are checked apart: each is the whole loss, so an error in either
// is measured against its own gradient, not hidden under the other's.
TEST_P(RouterGradients, GatesWithRespectToTheLogits) {
  auto r = random_vector(tokens_ * 3, 15);
  auto loss = [&] {
    route();
    return dot(gates_, r);
  };
  loss();
  baseline_ = selected_;
  std::vector<float> d_logits(logits_.size(), 0.0f);
  k::router_backward(shape_, scores_.data(), selected_.data(), r.data(), d_logits.data(), tokens_);
  expect_gradients_match(loss, {{"logits", logits_.data(), d_logits}}, 1e-3);
}

TEST_P(RouterGradients, BalanceLossWithRespectToTheLogits) {
  const double alpha = 1.0;
  auto loss = [&] {
    route();
    return k::balance_loss_forward(shape_, scores_.data(), selected_.data(), sequences_, length_,
                                   alpha);
  };
  loss();
  baseline_ = selected_;
  std::vector<float> d_logits(logits_.size(), 0.0f);
  k::balance_loss_backward(shape_, scores_.data(), selected_.data(), sequences_, length_, alpha,
                           1.0f, d_logits.data());
  expect_gradients_match(loss, {{"logits", logits_.data(), d_logits}}, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Normalized, RouterGradients, ::testing::Values(true, false));

TEST(KernelGradients, BalanceLossMatchesItsDefinition) {
  // One sequence of 4 tokens, 4 experts, top-1: hand-computed f_i and P_i.
  const k::router_shape shape{4, 1, 1, 1, true, 1.0f};
  const std::vector<float> scores{0.9f, 0.1f, 0.5f, 0.5f, 0.2f, 0.8f, 0.5f, 0.5f,
                                  0.6f, 0.1f, 0.2f, 0.1f, 0.3f, 0.3f, 0.3f, 0.9f};
  const std::vector<std::int32_t> selected{0, 1, 0, 3};
  double expected = 0.0;
  const double f[4] = {4.0 / 4 * 2, 4.0 / 4 * 1, 0.0, 4.0 / 4 * 1};
  for (int e = 0; e < 4; ++e) {
    double p = 0.0;
    for (int t = 0; t < 4; ++t) {
      double z = 0.0;
      for (int j = 0; j < 4; ++j)
        z += static_cast<double>(scores[static_cast<std::size_t>(t * 4 + j)]);
      p += static_cast<double>(scores[static_cast<std::size_t>(t * 4 + e)]) / z;
    }
    expected += f[e] * p / 4.0;
  }
  EXPECT_NEAR(k::balance_loss_forward(shape, scores.data(), selected.data(), 1, 4, 1e-4),
              1e-4 * expected, 1e-12);
}

TEST(KernelGradients, CrossEntropy) {
  const std::int64_t rows = 6, vocab = 11;
  auto logits = random_vector(rows * vocab, 16, 2.0f);
  const std::vector<std::int32_t> targets{3, -1, 10, 0, 7, 7};
  auto loss = [&] {
    return k::cross_entropy_forward(logits.data(), targets.data(), rows, vocab, nullptr, nullptr);
  };
  std::vector<float> d(logits.size());
  k::cross_entropy_backward(logits.data(), targets.data(), rows, vocab, 1.0f, d.data());
  expect_gradients_match(loss, {{"logits", logits.data(), d}});
  for (std::int64_t v = 0; v < vocab; ++v)
    EXPECT_EQ(d[static_cast<std::size_t>(vocab + v)], 0.0f);  // unlabelled row
}

class LayerGradients : public ::testing::Test {
 protected:
  troupe::thread_pool pool_{2};
  troupe::exec_context context_{troupe::device::cpu(), pool_};
};

TEST_F(LayerGradients, EmbeddingAndOutputHead) {
  const std::int64_t vocab = 13, width = 6, rows = 5;
  auto table = random_vector(vocab * width, 17), head = random_vector(vocab * width, 18, 0.5f);
  const std::vector<std::int32_t> tokens{4, 0, 4, -1, 12}, targets{1, 2, -1, 5, 12};
  std::vector<float> hidden(rows * width), logits(rows * vocab);
  auto loss = [&] {
    troupe::embedding_forward(context_, table.data(), vocab, width, tokens.data(), rows,
                              hidden.data());
    return troupe::output_head_forward(context_, hidden.data(), head.data(), logits.data(),
                                       targets.data(), rows, width, vocab)
        .sum;
  };
  loss();
  std::vector<float> d_hidden(hidden.size(), 0.0f), d_head(head.size(), 0.0f),
      d_table(table.size(), 0.0f);
  troupe::output_head_backward(context_, hidden.data(), head.data(), targets.data(), 1.0f,
                               d_hidden.data(), d_head.data(), rows, width, vocab);
  troupe::embedding_backward(context_, d_hidden.data(), tokens.data(), rows, width, vocab,
                             d_table.data());
  expect_gradients_match(
      loss, {{"embedding table", table.data(), d_table}, {"head", head.data(), d_head}});
}

// Training's head works two rows at a time here (a chunk of rows at a time on a real
// vocabulary): the loss equals the one of the whole logits, and the gradients equal the
// one-chunk backward's to float rounding (1e-6 relative: the same products, other GEMM shapes).
TEST_F(LayerGradients, OutputHeadInChunksIsTheWholeHead) {
  const std::int64_t vocab = 13, width = 6, rows = 5;
  const auto hidden = random_vector(rows * width, 21),
             head = random_vector(vocab * width, 22, 0.5f);
  const std::vector<std::int32_t> targets{1, -1, 7, 5, 12};
  std::vector<float> logits(rows * vocab);
  const auto whole = troupe::output_head_forward(context_, hidden.data(), head.data(),
                                                 logits.data(), targets.data(), rows, width, vocab);
  const auto chunked = troupe::output_head_loss(context_, hidden.data(), head.data(),
                                                targets.data(), rows, width, vocab, 2);
  EXPECT_EQ(chunked.labelled, whole.labelled);
  EXPECT_NEAR(chunked.sum, whole.sum, 1e-6 * std::abs(whole.sum));
  std::vector<float> dx_one(hidden.size(), 0.5f), dw_one(head.size(), 0.25f);
  std::vector<float> dx_two = dx_one, dw_two = dw_one;
  troupe::output_head_backward(context_, hidden.data(), head.data(), targets.data(), 0.5f,
                               dx_one.data(), dw_one.data(), rows, width, vocab, rows);
  troupe::output_head_backward(context_, hidden.data(), head.data(), targets.data(), 0.5f,
                               dx_two.data(), dw_two.data(), rows, width, vocab, 2);
  for (std::size_t i = 0; i < dx_one.size(); ++i)
    EXPECT_NEAR(dx_two[i], dx_one[i], 1e-6 * (1.0 + std::abs(static_cast<double>(dx_one[i]))))
        << "dx " << i;
  for (std::size_t i = 0; i < dw_one.size(); ++i)
    EXPECT_NEAR(dw_two[i], dw_one[i], 1e-6 * (1.0 + std::abs(static_cast<double>(dw_one[i]))))
        << "dW " << i;
}

// On the host training's forward keeps the head's gradient (softmax - onehot, FP32) up to
// 64 MiB and the backward multiplies it out: the same loss, and gradients equal to the
// recomputing backward's to float rounding (1e-6 relative: the scale applied by the GEMM instead
// of the softmax).
TEST_F(LayerGradients, TheKeptHeadGradientIsTheRecomputedOne) {
  const std::int64_t vocab = 13, width = 6, rows = 5;
  EXPECT_TRUE(troupe::head_keeps_gradient(context_, rows, vocab));
  EXPECT_TRUE(troupe::head_keeps_gradient(context_, 4096, 4096));  // 64 MiB
  EXPECT_FALSE(troupe::head_keeps_gradient(context_, 4097, 4096));
  const auto hidden = random_vector(rows * width, 23),
             head = random_vector(vocab * width, 24, 0.5f);
  const std::vector<std::int32_t> targets{3, -1, 0, 12, 12};
  troupe::tensor kept;
  const auto with = troupe::output_head_loss_keeping_gradient(
      context_, hidden.data(), head.data(), targets.data(), rows, width, vocab, kept);
  const auto without = troupe::output_head_loss(context_, hidden.data(), head.data(),
                                                targets.data(), rows, width, vocab);
  EXPECT_EQ(with.labelled, without.labelled);
  EXPECT_NEAR(with.sum, without.sum, 1e-6 * std::abs(without.sum));
  std::vector<float> dx_kept(hidden.size(), 0.5f), dw_kept(head.size(), 0.25f);
  std::vector<float> dx = dx_kept, dw = dw_kept;
  troupe::output_head_backward_kept(context_, hidden.data(), head.data(), kept, 0.5f,
                                    dx_kept.data(), dw_kept.data(), rows, width, vocab);
  troupe::output_head_backward(context_, hidden.data(), head.data(), targets.data(), 0.5f,
                               dx.data(), dw.data(), rows, width, vocab);
  for (std::size_t i = 0; i < dx.size(); ++i)
    EXPECT_NEAR(dx_kept[i], dx[i], 1e-6 * (1.0 + std::abs(static_cast<double>(dx[i])))) << i;
  for (std::size_t i = 0; i < dw.size(); ++i)
    EXPECT_NEAR(dw_kept[i], dw[i], 1e-6 * (1.0 + std::abs(static_cast<double>(dw[i])))) << i;
  // A backward without its kept gradient is refused, naming the shape.
  EXPECT_THROW(
      troupe::output_head_backward_kept(context_, hidden.data(), head.data(), troupe::tensor(),
                                        0.5f, dx.data(), dw.data(), rows, width, vocab),
      std::exception);
}

TEST_F(LayerGradients, DenseFfnInTwoParts) {
  const std::int64_t hidden = 12, inter = 20, rows = 7;
  auto gate = random_vector(inter * hidden, 19, 0.3f), up = random_vector(inter * hidden, 20, 0.3f);
  auto down = random_vector(hidden * inter, 21, 0.3f), x = random_vector(rows * hidden, 22),
       r = random_vector(rows * hidden, 23);
  std::vector<float> y(rows * hidden), dgate(gate.size(), 0.0f), dup(up.size(), 0.0f),
      ddown(down.size(), 0.0f);
  troupe::dense_ffn ffn(hidden, inter);
  const troupe::dense_ffn_weights w{gate.data(),  up.data(),  down.data(),
                                    dgate.data(), dup.data(), ddown.data()};
  std::int64_t micro_batch = 0;
  auto loss = [&] {
    ffn.forward(context_, w, ++micro_batch, x.data(), y.data(), rows);
    ffn.forget(micro_batch);
    return dot(y, r);
  };
  ffn.forward(context_, w, 0, x.data(), y.data(), rows);
  std::vector<float> dx(x.size(), 0.0f);
  ffn.backward(context_, w, 0, TROUPE_BACKWARD_INPUT, r.data(), dx.data());
  ffn.backward(context_, w, 0, TROUPE_BACKWARD_WEIGHT, nullptr, nullptr);
  expect_gradients_match(loss, {{"x", x.data(), dx},
                                {"gate", gate.data(), dgate},
                                {"up", up.data(), dup},
                                {"down", down.data(), ddown}});
}

}  // namespace
