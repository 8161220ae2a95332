// AdamW against a float64 reference of the same recipe (BF16 moments between steps, FP32
// update), to 1e-6 relative on the weights over 20 steps; the schedule of the learning rate and
// of the batch size.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <random>

#include "runtime/core/error.hpp"
#include "runtime/exec/bf16_copies.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/gradient_squares.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "runtime/optim/adamw.hpp"
#include "runtime/optim/training_schedule.hpp"
#include "runtime/tensor/bf16.hpp"

namespace {

using namespace troupe;

parameter_spec trainable(std::vector<std::int64_t> shape) {
  return {"", std::move(shape), dtype::f32, TROUPE_INIT_NORMAL, 0.02f, TROUPE_PARAM_TRAINABLE};
}

// Parameter initialisation (kernels/cpu/counter_random.hpp): the same bits whatever the
// number of threads that draw them, N(0, scale^2) and U(-scale, scale) by their moments.
TEST(ParameterInit, SameBitsOnAnyThreadCountAndTheRightMoments) {
  auto fill = [](thread_pool* pool) {
    parameter_store store;
    store.add("normal",
              {"", {1001, 513}, dtype::f32, TROUPE_INIT_NORMAL, 0.02f, TROUPE_PARAM_TRAINABLE});
    store.add("uniform",
              {"", {77, 1000}, dtype::f32, TROUPE_INIT_UNIFORM, 0.5f, TROUPE_PARAM_TRAINABLE});
    store.add("ones", {"", {9}, dtype::f32, TROUPE_INIT_ONES, 0.0f, TROUPE_PARAM_TRAINABLE});
    store.initialize(42, pool);
    std::vector<std::vector<float>> out;
    for (const parameter* p : store.all())
      out.emplace_back(p->value.data_as<const float>(),
                       p->value.data_as<const float>() + p->value.numel());
    return out;
  };
  thread_pool three(3);
  const auto alone = fill(nullptr), shared = fill(&three);
  ASSERT_EQ(alone.size(), 3u);
  for (std::size_t t = 0; t < alone.size(); ++t) EXPECT_EQ(alone[t], shared[t]) << t;

  const auto moments = [](const std::vector<float>& v) {
    double sum = 0.0, squares = 0.0, fourth = 0.0;
    for (float value : v) {
      const double x = value;
      sum += x;
      squares += x * x;
      fourth += x * x * x * x;
    }
    const double n = static_cast<double>(v.size()), variance = squares / n;
    return std::array<double, 3>{sum / n, variance, fourth / n / (variance * variance)};
  };
  const auto normal = moments(alone[0]);  // 513,513 values: the bounds are > 5 standard errors
  EXPECT_NEAR(normal[0], 0.0, 5 * 0.02 / std::sqrt(513513.0));
  EXPECT_NEAR(std::sqrt(normal[1]), 0.02, 0.02 * 0.005);
  EXPECT_NEAR(normal[2], 3.0, 0.05);  // a Gaussian's kurtosis
  const auto uniform = moments(alone[1]);
  EXPECT_NEAR(uniform[0], 0.0, 0.01);
  EXPECT_NEAR(uniform[1], 0.25 / 3.0, 0.002);
  for (float x : alone[1]) ASSERT_TRUE(x >= -0.5f && x < 0.5f) << x;
  EXPECT_EQ(alone[2], std::vector<float>(9, 1.0f));
  // Another seed draws other values.
  parameter_store other;
  other.add("normal",
            {"", {1001, 513}, dtype::f32, TROUPE_INIT_NORMAL, 0.02f, TROUPE_PARAM_TRAINABLE});
  other.initialize(43);
  EXPECT_NE(other.at("normal").value.data_as<const float>()[0], alone[0][0]);
}

TEST(AdamW, MatchesAFloat64ReferenceWithBf16Moments) {
  parameter_store store;
  parameter& matrix = store.add("w", trainable({7, 33}));
  parameter& vector = store.add("norm", trainable({33}));
  store.add("bias", {"", {5}, dtype::f32, TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_BUFFER});
  store.initialize(3);
  const adamw_settings settings{0.9, 0.95, 1e-8, 0.1};
  adamw optimizer(settings);
  optimizer.attach(store);
  EXPECT_EQ(optimizer.parameter_count(), 7 * 33 + 33);  // not the buffer

  struct reference {
    std::vector<double> p, m, v;
    bool decay;
  };
  std::vector<reference> refs;
  for (parameter* p : {&matrix, &vector}) {
    reference r;
    r.p.assign(p->value.data_as<float>(), p->value.data_as<float>() + p->value.numel());
    r.m.assign(r.p.size(), 0.0);
    r.v.assign(r.p.size(), 0.0);
    r.decay = p->value.dim() >= 2;
    refs.push_back(r);
  }
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  thread_pool pool(2);
  for (std::int64_t step = 1; step <= 20; ++step) {
    const double lr = 1e-2 / static_cast<double>(step), scale = step % 3 == 0 ? 0.5 : 1.0;
    std::size_t k = 0;
    for (parameter* p : {&matrix, &vector}) {
      reference& r = refs[k++];
      float* g = p->grad.data_as<float>();
      for (std::int64_t i = 0; i < p->grad.numel(); ++i) {
        g[i] = normal(rng);
        const double grad = static_cast<double>(g[i] * static_cast<float>(scale));
        const double m1 = 0.9 * r.m[static_cast<std::size_t>(i)] + 0.1 * grad;
        const double v1 = 0.95 * r.v[static_cast<std::size_t>(i)] + 0.05 * grad * grad;
        double& w = r.p[static_cast<std::size_t>(i)];
        if (r.decay) w *= 1.0 - lr * 0.1;
        w -= lr * (m1 / (1.0 - std::pow(0.9, step))) /
             (std::sqrt(v1 / (1.0 - std::pow(0.95, step))) + 1e-8);
        r.m[static_cast<std::size_t>(i)] = bf16_to_float(float_to_bf16(static_cast<float>(m1)));
        r.v[static_cast<std::size_t>(i)] = bf16_to_float(float_to_bf16(static_cast<float>(v1)));
      }
    }
    optimizer.step(lr, scale, step, pool);
  }
  std::size_t k = 0;
  for (parameter* p : {&matrix, &vector}) {
    const reference& r = refs[k++];
    double worst = 0.0, size = 0.0;
    for (std::int64_t i = 0; i < p->value.numel(); ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(p->value.data_as<float>()[i]) -
                                        r.p[static_cast<std::size_t>(i)]));
      size = std::max(size, std::fabs(r.p[static_cast<std::size_t>(i)]));
    }
    EXPECT_LE(worst / size, 1e-6) << p->name;
  }
}

TEST(AdamW, StateRoundTripsAndResumesBitForBit) {
  auto make = [](parameter_store& store) {
    store.add("w", trainable({4, 130}));
    store.initialize(1);
  };
  parameter_store a, b;
  make(a);
  make(b);
  adamw first({}), second({});
  first.attach(a);
  second.attach(b);
  thread_pool pool(2);
  auto fill = [](parameter_store& s, int step) {
    float* g = s.at("w").grad.data_as<float>();
    for (std::int64_t i = 0; i < s.at("w").grad.numel(); ++i)
      g[i] = std::sin(static_cast<float>(i * step));
  };
  for (int step = 1; step <= 3; ++step) {
    fill(a, step);
    first.step(1e-3, 1.0, step, pool);
  }
  // b takes a's weights and moments, then both run two more steps.
  b.at("w").value.copy_from(a.at("w").value);
  second.load_state(first.state());
  for (int step = 4; step <= 5; ++step) {
    fill(a, step);
    fill(b, step);
    first.step(1e-3, 1.0, step, pool);
    second.step(1e-3, 1.0, step, pool);
  }
  EXPECT_EQ(0,
            std::memcmp(a.at("w").value.data(), b.at("w").value.data(), a.at("w").value.nbytes()));
  auto state = first.state();
  state.pop_back();
  EXPECT_THROW(second.load_state(state), troupe::error);
}

// The number plugins read through their context to know when their weights' derived copies
// (the moe plugin's BF16 experts) are stale: it moves on every write the runtime makes.
TEST(ParameterVersion, MovesOnDeclarationInitialisationAndEveryOptimizerStep) {
  thread_pool pool(1);
  const exec_context context(device::cpu(), pool);
  const troupe_exec_context* abi = context.abi();
  ASSERT_GE(abi->struct_size,
            offsetof(troupe_exec_context, parameter_version) + sizeof(abi->parameter_version));
  ASSERT_NE(abi->parameter_version, nullptr);
  std::uint64_t seen = abi->parameter_version();
  const auto moved = [&] {
    const std::uint64_t now = abi->parameter_version();
    const bool changed = now != seen;
    seen = now;
    return changed;
  };
  EXPECT_EQ(seen, parameter_version());
  parameter_store store;
  store.add("w", trainable({3, 5}));
  EXPECT_TRUE(moved());
  store.initialize(1);
  EXPECT_TRUE(moved());
  EXPECT_FALSE(moved());  // reading it changes nothing
  adamw optimizer({});
  optimizer.attach(store);
  optimizer.step(1e-3, 1.0, 1, pool);
  EXPECT_TRUE(moved());
  optimizer.step(1e-3, 1.0, 2, context);
  EXPECT_TRUE(moved());
}

// The number a layer reads to know its gradients are zeros (ABI 1.4): per context, one more on each
// gradients_zeroed() (the runtime calls it right after it zeroes them) and nothing else; contexts
// far apart, so no layer takes another context's count for a zeroing of its own.
TEST(GradientGeneration, GrowsByOneOnlyWhenTheContextSaysTheGradientsWereZeroed) {
  thread_pool pool(1);
  exec_context context(device::cpu(), pool), other(device::cpu(), pool);
  const troupe_exec_context* abi = context.abi();
  ASSERT_GE(abi->struct_size,
            offsetof(troupe_exec_context, gradient_generation) + sizeof(abi->gradient_generation));
  const std::uint64_t first = abi->gradient_generation;
  parameter_store store;
  store.add("w", trainable({3, 5}));
  store.zero_grads(&pool);  // zeroing alone says nothing: the caller knows which context it serves
  EXPECT_EQ(abi->gradient_generation, first);
  context.gradients_zeroed();
  EXPECT_EQ(abi->gradient_generation, first + 1);
  const std::uint64_t theirs = other.abi()->gradient_generation;
  EXPECT_GE(theirs > first ? theirs - first : first - theirs, std::uint64_t{1} << 32);
  other.gradients_zeroed();
  EXPECT_EQ(abi->gradient_generation, first + 1);  // each context its own
}

// Gradients a layer overwrites (ABI 1.5): zero_grads leaves them only when asked to, for a
// caller that moves its context's gradient_generation next.
TEST(GradientGeneration, OverwrittenGradientsAreLeftOnlyWhenAsked) {
  thread_pool pool(1);
  parameter_store store;
  parameter& plain = store.add("plain", trainable({4}));
  parameter_spec spec = trainable({4});
  spec.flags |= TROUPE_PARAM_GRAD_OVERWRITTEN;
  parameter& overwritten = store.add("overwritten", spec);
  const auto fill = [&](float v) {
    for (parameter* p : {&plain, &overwritten})
      for (std::int64_t i = 0; i < 4; ++i) p->grad.data_as<float>()[i] = v;
  };
  fill(2.0f);
  store.zero_grads(&pool, true);
  EXPECT_EQ(plain.grad.data_as<float>()[3], 0.0f);
  EXPECT_EQ(overwritten.grad.data_as<float>()[3], 2.0f);
  fill(2.0f);
  store.zero_grads(&pool);
  EXPECT_EQ(overwritten.grad.data_as<float>()[3], 0.0f);
}

// The gradients' sums of squares layers report (ABI 1.6): found for their gradient, size and the
// context's gradient generation only; a zeroing of the gradients (the next generation) or a
// withdrawal (no context needed) ends a report.
TEST(GradientSquares, AReportHoldsForItsGenerationUntilWithdrawn) {
  thread_pool pool(1);
  exec_context context(device::cpu(), pool);
  const troupe_exec_context* abi = context.abi();
  ASSERT_GE(abi->struct_size,
            offsetof(troupe_exec_context, gradient_squares) + sizeof(abi->gradient_squares));
  ASSERT_NE(abi->gradient_squares, nullptr);
  std::array<float, 8> grad{};
  const double sum = 3.0;
  const std::uint64_t now = context.gradient_generation();
  EXPECT_EQ(abi->gradient_squares(abi, grad.data(), 8, &sum), 1);
  EXPECT_EQ(gradient_squares::find(grad.data(), 8, now), &sum);
  EXPECT_EQ(gradient_squares::find(grad.data(), 7, now), nullptr);  // another size
  context.gradients_zeroed();
  EXPECT_EQ(gradient_squares::find(grad.data(), 8, context.gradient_generation()), nullptr);
  EXPECT_EQ(abi->gradient_squares(abi, grad.data(), 8, &sum), 1);  // the next backward's report
  EXPECT_EQ(gradient_squares::find(grad.data(), 8, context.gradient_generation()), &sum);
  EXPECT_EQ(abi->gradient_squares(nullptr, grad.data(), 0, nullptr), 1);  // withdrawn
  EXPECT_EQ(gradient_squares::find(grad.data(), 8, context.gradient_generation()), nullptr);
  EXPECT_EQ(abi->gradient_squares(nullptr, grad.data(), 8, &sum), 0);  // a report needs a context
  EXPECT_EQ(abi->gradient_squares(abi, grad.data(), 0, &sum), 0);
  EXPECT_EQ(abi->gradient_squares(abi, nullptr, 8, &sum), 0);
}

// The BF16 copies layers keep and the optimizer writes (ABI 1.5): recorded through the context,
// current only after the optimizer said it wrote them and until any other write of parameters.
TEST(Bf16Copies, CurrentFromTheOptimizersWriteUntilAnyOtherWrite) {
  thread_pool pool(1);
  exec_context context(device::cpu(), pool);
  const troupe_exec_context* abi = context.abi();
  ASSERT_GE(abi->struct_size,
            offsetof(troupe_exec_context, bf16_copy_current) + sizeof(abi->bf16_copy_current));
  ASSERT_NE(abi->keep_bf16_copy, nullptr);
  std::array<float, 6> value{};
  std::array<std::uint16_t, 6> copy{};
  const std::uint64_t before = bf16_copies::changes();
  EXPECT_EQ(abi->keep_bf16_copy(value.data(), copy.data(), 6), 1);
  EXPECT_NE(bf16_copies::changes(), before);
  EXPECT_EQ(bf16_copies::find(value.data(), 6), copy.data());
  EXPECT_EQ(bf16_copies::find(value.data(), 5), nullptr);  // another size: not this parameter's
  EXPECT_EQ(abi->bf16_copy_current(value.data()), 0);      // nothing written yet
  bf16_copies::written({value.data()});
  EXPECT_EQ(abi->bf16_copy_current(value.data()), 1);
  parameters_changed();  // a checkpoint load, say
  EXPECT_EQ(abi->bf16_copy_current(value.data()), 0);
  bf16_copies::written({value.data()});
  EXPECT_EQ(abi->keep_bf16_copy(value.data(), nullptr, 0), 1);  // withdrawn
  EXPECT_EQ(bf16_copies::find(value.data(), 6), nullptr);
  EXPECT_EQ(abi->bf16_copy_current(value.data()), 0);
  EXPECT_EQ(abi->keep_bf16_copy(nullptr, copy.data(), 6), 0);
  // An optimizer step makes its own parameters' copies stale, no other's (a rank stepping two
  // chunks' optimizers one after the other keeps the first's copies current).
  std::array<float, 6> other{};
  std::array<std::uint16_t, 6> other_copy{};
  ASSERT_EQ(abi->keep_bf16_copy(value.data(), copy.data(), 6), 1);
  ASSERT_EQ(abi->keep_bf16_copy(other.data(), other_copy.data(), 6), 1);
  bf16_copies::written({value.data(), other.data()});
  const std::uint64_t version = parameter_version();
  parameters_stepped({value.data()});
  EXPECT_NE(parameter_version(), version);
  EXPECT_EQ(abi->bf16_copy_current(value.data()), 0);
  EXPECT_EQ(abi->bf16_copy_current(other.data()), 1);
  abi->keep_bf16_copy(value.data(), nullptr, 0);
  abi->keep_bf16_copy(other.data(), nullptr, 0);
  EXPECT_EQ(abi->keep_bf16_copy(value.data(), copy.data(), 0), 0);
}

TEST(TrainingSchedule, WarmupThenCosineToTheFloor) {
  const lr_schedule lr{1e-3, 1e-4, 4, 14};
  EXPECT_DOUBLE_EQ(lr.at(0), 2.5e-4);
  EXPECT_DOUBLE_EQ(lr.at(3), 1e-3);
  EXPECT_DOUBLE_EQ(lr.at(4), 1e-3);    // cosine starts at the peak
  EXPECT_DOUBLE_EQ(lr.at(9), 5.5e-4);  // halfway: the mean of peak and floor
  EXPECT_DOUBLE_EQ(lr.at(14), 1e-4);
  EXPECT_DOUBLE_EQ(lr.at(100), 1e-4);
}

TEST(TrainingSchedule, BatchRampRisesLinearlyInMultiples) {
  const batch_ramp ramp{16, 4, 6, 2};
  std::vector<std::int64_t> counts;
  for (int s = 0; s < 8; ++s) counts.push_back(ramp.at(s));
  EXPECT_EQ(counts, (std::vector<std::int64_t>{4, 6, 8, 10, 12, 14, 16, 16}));
  EXPECT_EQ((batch_ramp{4, 4, 0, 1}.at(0)), 4);
}

}  // namespace
