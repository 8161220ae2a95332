// The model's CUDA kernels (kernels/cuda: the ops of DeepSeek-V3's forward and backward) against
// two independent references:
//  - the CPU kernels (kernels/cpu) on the same FP32 inputs. Both compute in FP32 in different
//    orders (tree reductions on the GPU, sequential or float64 sums on the CPU), so results are
//    compared by the largest error relative to the reference's largest magnitude, bounded by
//    2e-5 unless a test says otherwise; integer results (expert selection, grouping, counts)
//    must be identical;
//  - central finite differences of the GPU forward for each backward: the directional
//    derivative (f(x + h u) - f(x - h u)) / 2h of f = sum(r * out) against <grad, u>, with h =
//    1e-2 and a bound of 2e-3 relative (FP32 forward evaluation; truncation is O(h^2)).
// Determinism: the kernels that sum in a fixed order give the same bits on a second run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/cross_entropy.hpp"
#include "kernels/cpu/expert_combine.hpp"
#include "kernels/cpu/gemm.hpp"
#include "kernels/cpu/rmsnorm.hpp"
#include "kernels/cpu/rope.hpp"
#include "kernels/cpu/router.hpp"
#include "kernels/cpu/swiglu.hpp"
#include "kernels/cuda/adamw.hpp"
#include "kernels/cuda/attention.hpp"
#include "kernels/cuda/attention_cudnn.hpp"
#include "kernels/cuda/cross_entropy.hpp"
#include "kernels/cuda/embedding.hpp"
#include "kernels/cuda/expert_combine.hpp"
#include "kernels/cuda/gradient_norm.hpp"
#include "kernels/cuda/grouped_gemm.hpp"
#include "kernels/cuda/rmsnorm.hpp"
#include "kernels/cuda/rope.hpp"
#include "kernels/cuda/router.hpp"
#include "kernels/cuda/swiglu.hpp"
#include "runtime/tensor/bf16.hpp"
#include "tests/gpu/gpu_skip.hpp"
#include "tests/support/fixtures.hpp"

namespace {

using namespace troupe;
namespace cpu = troupe::kernels::cpu;
namespace gpu = troupe::kernels::cuda;

constexpr double fp32_bound = 2e-5;
constexpr double fd_bound = 2e-3;

/// A device array (cuda:0, default stream) filled from or read into host vectors.
template <class T>
class device_array {
 public:
  explicit device_array(std::size_t count) : count_(count) {
    data_ = static_cast<T*>(cuda::allocate(std::max<std::size_t>(count, 1) * sizeof(T), 0));
    set(std::vector<T>(count, T{}));
  }
  explicit device_array(const std::vector<T>& values) : device_array(values.size()) { set(values); }
  ~device_array() { cuda::release(data_, 0); }
  device_array(const device_array&) = delete;
  device_array& operator=(const device_array&) = delete;

  void set(const std::vector<T>& values) {
    if (!values.empty())
      cuda::copy(data_, values.data(), values.size() * sizeof(T), cuda::copy_kind::host_to_device,
                 0);
  }
  std::vector<T> get() const {
    std::vector<T> values(count_);
    if (count_ > 0)
      cuda::copy(values.data(), data_, count_ * sizeof(T), cuda::copy_kind::device_to_host, 0);
    return values;
  }
  T* data() const { return data_; }

 private:
  T* data_ = nullptr;
  std::size_t count_;
};

std::vector<float> random_values(std::size_t count, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(count);
  for (auto& x : v) x = normal(rng);
  return v;
}

/// max |a - b| / max |b|.
double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0.0, scale = 1e-30;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return worst / scale;
}

#define EXPECT_CLOSE(gpu_values, cpu_values, bound, what)                          \
  do {                                                                             \
    const double error_ = relative_error((gpu_values), (cpu_values));              \
    std::printf("[ %s ] relative error %.3g (bound %.0e)\n", what, error_, bound); \
    EXPECT_LT(error_, bound) << (what);                                            \
  } while (false)

/// The directional derivative of f = sum(r * out(x)) along a random u, by central differences
/// (float64 sums of the FP32 forward), against <grad, u>; returns the relative difference.
double finite_difference_error(
    const std::function<std::vector<float>(const std::vector<float>&)>& out,
    const std::vector<float>& x, const std::vector<float>& r, const std::vector<float>& grad,
    std::uint32_t seed, double h = 1e-2) {
  const std::vector<float> u = random_values(x.size(), seed);
  auto f = [&](double step) {
    std::vector<float> moved(x);
    for (std::size_t i = 0; i < x.size(); ++i)
      moved[i] += static_cast<float>(step * static_cast<double>(u[i]));
    const std::vector<float> y = out(moved);
    double sum = 0.0;
    for (std::size_t i = 0; i < y.size(); ++i)
      sum += static_cast<double>(r[i]) * static_cast<double>(y[i]);
    return sum;
  };
  const double numeric = (f(h) - f(-h)) / (2 * h);
  double analytic = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i)
    analytic += static_cast<double>(grad[i]) * static_cast<double>(u[i]);
  return std::fabs(numeric - analytic) / std::max(std::fabs(analytic), 1e-12);
}

#define EXPECT_FD(error_value, what)                                                   \
  do {                                                                                 \
    const double fd_ = (error_value);                                                  \
    std::printf("[ %s ] finite differences %.3g (bound %.0e)\n", what, fd_, fd_bound); \
    EXPECT_LT(fd_, fd_bound) << (what);                                                \
  } while (false)

TEST(CudaOps, RmsNormMatchesTheCpuAndFiniteDifferences) {
  TROUPE_SKIP_WITHOUT_GPU();
  // Widths for the vector kernels (float4 rows in registers: 520, 1024, 2048, 300 below) and
  // for the scalar ones (7168: too wide; 2047: not a multiple of 4).
  for (auto [rows, dim] : {std::pair<std::int64_t, std::int64_t>{37, 520},
                           {70, 7168},
                           {1000, 1024},
                           {256, 2048},
                           {33, 2047}}) {
    const auto x = random_values(static_cast<std::size_t>(rows * dim), 1, 2.0f);
    auto weight = random_values(static_cast<std::size_t>(dim), 2);
    const auto dy = random_values(x.size(), 3);
    const auto dx0 = random_values(x.size(), 4);  // backward accumulates
    const auto dw0 = random_values(weight.size(), 5);
    std::vector<float> y(x.size()), rstd(static_cast<std::size_t>(rows)), dx(dx0), dw(dw0);
    cpu::rmsnorm_forward(x.data(), weight.data(), y.data(), rstd.data(), rows, dim, 1e-6f);
    cpu::rmsnorm_backward(dy.data(), x.data(), weight.data(), rstd.data(), dx.data(), dw.data(),
                          rows, dim);
    device_array<float> gx(x), gw(weight), gy(x.size()), grstd(rstd.size()), gdy(dy), gdx(dx0),
        gdw(dw0), scratch(static_cast<std::size_t>(gpu::rmsnorm_backward_scratch(rows, dim)));
    gpu::rmsnorm_forward(gx.data(), dim, gw.data(), gy.data(), dim, grstd.data(), rows, dim, 1e-6f,
                         nullptr);
    gpu::rmsnorm_backward(gdy.data(), dim, gx.data(), dim, gw.data(), grstd.data(), gdx.data(),
                          gdw.data(), rows, dim, scratch.data(), nullptr);
    EXPECT_CLOSE(gy.get(), y, fp32_bound, "rmsnorm y");
    EXPECT_CLOSE(grstd.get(), rstd, fp32_bound, "rmsnorm rstd");
    EXPECT_CLOSE(gdx.get(), dx, fp32_bound, "rmsnorm dx");
    EXPECT_CLOSE(gdw.get(), dw, fp32_bound, "rmsnorm dweight");
    // Same bits again (the weight gradient is summed in a fixed order).
    const auto first = gdw.get();
    gdw.set(dw0);
    gpu::rmsnorm_backward(gdy.data(), dim, gx.data(), dim, gw.data(), grstd.data(), gdx.data(),
                          gdw.data(), rows, dim, scratch.data(), nullptr);
    EXPECT_EQ(gdw.get(), first);
  }
  {  // Rows wider than the norm (MLA's latent: 512 of 576 columns), against the contiguous run.
    const std::int64_t rows = 64, dim = 512, ld = 576;
    const auto wide = random_values(static_cast<std::size_t>(rows * ld), 11, 2.0f);
    const auto dy = random_values(static_cast<std::size_t>(rows * dim), 12);
    const auto weight = random_values(static_cast<std::size_t>(dim), 13);
    std::vector<float> x(static_cast<std::size_t>(rows * dim));
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy_n(wide.begin() + r * ld, dim, x.begin() + r * dim);
    device_array<float> gwide(wide), gx(x), gw(weight), gdy(dy), gy(x.size()), gy_wide(x.size()),
        grstd(static_cast<std::size_t>(rows)), grstd_wide(static_cast<std::size_t>(rows)),
        gdx(std::vector<float>(x.size(), 0.0f)), gdx_wide(std::vector<float>(wide.size(), 0.0f)),
        gdw(std::vector<float>(weight.size(), 0.0f)),
        gdw_wide(std::vector<float>(weight.size(), 0.0f)),
        scratch(static_cast<std::size_t>(gpu::rmsnorm_backward_scratch(rows, dim)));
    gpu::rmsnorm_forward(gx.data(), dim, gw.data(), gy.data(), dim, grstd.data(), rows, dim, 1e-6f,
                         nullptr);
    gpu::rmsnorm_forward(gwide.data(), ld, gw.data(), gy_wide.data(), dim, grstd_wide.data(), rows,
                         dim, 1e-6f, nullptr);
    gpu::rmsnorm_backward(gdy.data(), dim, gx.data(), dim, gw.data(), grstd.data(), gdx.data(),
                          gdw.data(), rows, dim, scratch.data(), nullptr);
    gpu::rmsnorm_backward(gdy.data(), dim, gwide.data(), ld, gw.data(), grstd_wide.data(),
                          gdx_wide.data(), gdw_wide.data(), rows, dim, scratch.data(), nullptr);
    EXPECT_EQ(gy_wide.get(), gy.get());
    EXPECT_EQ(gdw_wide.get(), gdw.get());
    const auto dx = gdx.get(), dx_wide = gdx_wide.get();
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < ld; ++c)
        ASSERT_EQ(dx_wide[static_cast<std::size_t>(r * ld + c)],
                  c < dim ? dx[static_cast<std::size_t>(r * dim + c)] : 0.0f)
            << r << " " << c;
  }
  // Finite differences of dx and dweight (zero on entry) on the GPU alone.
  const std::int64_t rows = 9, dim = 300;
  const auto x = random_values(rows * dim, 6, 2.0f), weight = random_values(dim, 7);
  const auto r = random_values(rows * dim, 8);
  device_array<float> gx(x), gw(weight), gy(x.size()), grstd(rows), gr(r), gdx(x.size()),
      gdw(weight.size()),
      scratch(static_cast<std::size_t>(gpu::rmsnorm_backward_scratch(rows, dim)));
  gpu::rmsnorm_forward(gx.data(), dim, gw.data(), gy.data(), dim, grstd.data(), rows, dim, 1e-6f,
                       nullptr);
  gpu::rmsnorm_backward(gr.data(), dim, gx.data(), dim, gw.data(), grstd.data(), gdx.data(),
                        gdw.data(), rows, dim, scratch.data(), nullptr);
  auto run = [&](const std::vector<float>& xs, const std::vector<float>& ws) {
    device_array<float> ix(xs), iw(ws), out(xs.size());
    gpu::rmsnorm_forward(ix.data(), dim, iw.data(), out.data(), dim, nullptr, rows, dim, 1e-6f,
                         nullptr);
    return out.get();
  };
  EXPECT_FD(
      finite_difference_error([&](const auto& v) { return run(v, weight); }, x, r, gdx.get(), 9),
      "rmsnorm dx");
  EXPECT_FD(
      finite_difference_error([&](const auto& v) { return run(x, v); }, weight, r, gdw.get(), 10),
      "rmsnorm dweight");
}

TEST(CudaOps, RopeMatchesTheCpuBothWays) {
  TROUPE_SKIP_WITHOUT_GPU();
  const std::int64_t batch = 2, length = 45, heads = 3, dim = 64, stride = 192;
  cpu::yarn_parameters yarn{40.0, 4096, 32.0, 1.0};
  const auto inverse = cpu::rope_inverse_frequencies(dim, 10000.0, &yarn);
  std::vector<float> cos_table(static_cast<std::size_t>(length * dim / 2)),
      sin_table(cos_table.size());
  cpu::rope_tables(inverse, length, cos_table.data(), sin_table.data());
  const std::int64_t rows = batch * length * heads;
  const auto x = random_values(static_cast<std::size_t>(rows * stride), 11);
  device_array<float> gx(x), gc(cos_table), gs(sin_table);
  for (int direction : {1, -1}) {
    std::vector<float> expected(x);
    cpu::rope_rotate(expected.data() + 128, rows, stride, dim, heads, length, cos_table.data(),
                     sin_table.data(), direction);
    gx.set(x);
    gpu::rope_rotate(gx.data() + 128, rows, stride, dim, heads, length, gc.data(), gs.data(),
                     direction, nullptr);
    EXPECT_CLOSE(gx.get(), expected, 1e-6, direction > 0 ? "rope forward" : "rope inverse");
  }
}

TEST(CudaOps, SwigluMatchesTheCpuAndFiniteDifferences) {
  TROUPE_SKIP_WITHOUT_GPU();
  // Widths of float4s (the medium config's 1,408) and not; accumulated into and overwritten.
  const std::int64_t rows = 33;
  for (const std::int64_t width : {std::int64_t{1408}, std::int64_t{255}}) {
    const auto gate_up = random_values(static_cast<std::size_t>(rows * 2 * width), 12, 2.0f);
    const auto dh = random_values(static_cast<std::size_t>(rows * width), 13);
    const auto d0 = random_values(gate_up.size(), 14);
    std::vector<float> h(dh.size()), d(d0), fresh(d0.size(), 0.0f);
    cpu::swiglu_forward_fused(gate_up.data(), h.data(), rows, width);
    cpu::swiglu_backward_fused(dh.data(), gate_up.data(), d.data(), rows, width);
    cpu::swiglu_backward_fused(dh.data(), gate_up.data(), fresh.data(), rows, width);
    device_array<float> ggu(gate_up), gh(h.size()), gdh(dh), gd(d0), gfresh(d0);
    gpu::swiglu_forward_fused(ggu.data(), gh.data(), rows, width, nullptr);
    gpu::swiglu_backward_fused(gdh.data(), ggu.data(), gd.data(), rows, width, nullptr);
    gpu::swiglu_backward_fused(gdh.data(), ggu.data(), gfresh.data(), rows, width, nullptr, false);
    const std::string what = "swiglu fused, width " + std::to_string(width);
    EXPECT_CLOSE(gh.get(), h, fp32_bound, (what + ": h").c_str());
    EXPECT_CLOSE(gd.get(), d, fp32_bound, (what + ": d(gate|up) added").c_str());
    EXPECT_CLOSE(gfresh.get(), fresh, fp32_bound, (what + ": d(gate|up) written").c_str());
    if (width % 4 == 0) {  // the BF16 outputs: the f32 kernels' results rounded, bit for bit
      device_array<std::uint16_t> gh16(h.size()), gd16(d0.size());
      gpu::swiglu_forward_fused_bf16(ggu.data(), gh16.data(), rows, width, nullptr);
      gpu::swiglu_backward_fused_bf16(gdh.data(), ggu.data(), gd16.data(), rows, width, nullptr);
      const auto rounded = [](const std::vector<float>& values) {
        std::vector<std::uint16_t> bits;
        for (float v : values) bits.push_back(float_to_bf16(v));
        return bits;
      };
      EXPECT_EQ(gh16.get(), rounded(gh.get())) << what << ": h in BF16";
      EXPECT_EQ(gd16.get(), rounded(gfresh.get())) << what << ": d(gate|up) in BF16";
      // BF16 inputs (the grouped GEMMs' BF16 outputs): the f32 kernels on the inputs widened
      // from the same bits, bit for bit.
      const auto widened = [](const std::vector<std::uint16_t>& bits) {
        std::vector<float> values;
        for (std::uint16_t b : bits) values.push_back(bf16_to_float(b));
        return values;
      };
      const auto gu_bits = rounded(gate_up), dh_bits = rounded(dh);
      device_array<std::uint16_t> ggu16(gu_bits), gdh16(dh_bits), gh16b(h.size()), gd16b(d0.size());
      device_array<float> ggu_wide(widened(gu_bits)), gdh_wide(widened(dh_bits)), gh_wide(h.size()),
          gd_wide(d0.size());
      gpu::swiglu_forward_fused_bf16(ggu16.data(), gh16b.data(), rows, width, nullptr);
      gpu::swiglu_backward_fused_bf16(gdh16.data(), ggu16.data(), gd16b.data(), rows, width,
                                      nullptr);
      gpu::swiglu_forward_fused(ggu_wide.data(), gh_wide.data(), rows, width, nullptr);
      gpu::swiglu_backward_fused(gdh_wide.data(), ggu_wide.data(), gd_wide.data(), rows, width,
                                 nullptr, false);
      EXPECT_EQ(gh16b.get(), rounded(gh_wide.get())) << what << ": h from BF16 inputs";
      EXPECT_EQ(gd16b.get(), rounded(gd_wide.get())) << what << ": d(gate|up) from BF16 inputs";
    }
  }
  // Separate gate and up buffers.
  const std::int64_t count = 1001;
  const auto gate = random_values(count, 15, 2.0f), up = random_values(count, 16);
  const auto r = random_values(count, 17);
  std::vector<float> h2(count), dg(count, 0.0f), du(count, 0.0f);
  cpu::swiglu_forward(gate.data(), up.data(), h2.data(), count);
  cpu::swiglu_backward(r.data(), gate.data(), up.data(), dg.data(), du.data(), count);
  device_array<float> g1(gate), g2(up), g3(count), gr(r), gdg(count), gdu(count);
  gpu::swiglu_forward(g1.data(), g2.data(), g3.data(), count, nullptr);
  gpu::swiglu_backward(gr.data(), g1.data(), g2.data(), gdg.data(), gdu.data(), count, nullptr);
  EXPECT_CLOSE(g3.get(), h2, fp32_bound, "swiglu h");
  EXPECT_CLOSE(gdg.get(), dg, fp32_bound, "swiglu dgate");
  EXPECT_CLOSE(gdu.get(), du, fp32_bound, "swiglu dup");
  auto run = [&](const std::vector<float>& gs, const std::vector<float>& us) {
    device_array<float> a(gs), b(us), out(gs.size());
    gpu::swiglu_forward(a.data(), b.data(), out.data(), count, nullptr);
    return out.get();
  };
  EXPECT_FD(
      finite_difference_error([&](const auto& v) { return run(v, up); }, gate, r, gdg.get(), 18),
      "swiglu dgate");
  EXPECT_FD(
      finite_difference_error([&](const auto& v) { return run(gate, v); }, up, r, gdu.get(), 19),
      "swiglu dup");
}

TEST(CudaOps, EmbeddingGathersAndSumsGradientsDeterministically) {
  TROUPE_SKIP_WITHOUT_GPU();
  const std::int64_t vocab = 1000, width = 300, count = 4000;
  const auto table = random_values(static_cast<std::size_t>(vocab * width), 20);
  std::vector<std::int32_t> tokens(count);
  std::mt19937 rng(21);
  for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % 50);  // many repeats
  tokens[5] = -1;
  tokens[17] = 999;
  const auto dout = random_values(static_cast<std::size_t>(count * width), 22);
  std::vector<float> out(dout.size(), 0.0f);
  std::vector<float> dtable(table.size(), 0.0f);
  for (std::int64_t t = 0; t < count; ++t)
    for (std::int64_t i = 0; i < width; ++i) {
      if (tokens[t] < 0) continue;
      out[t * width + i] = table[tokens[t] * width + i];
      dtable[tokens[t] * width + i] += dout[t * width + i];
    }
  device_array<float> gtable(table), gout(out.size()), gdout(dout), gdtable(dtable.size());
  device_array<std::int32_t> gtokens(tokens);
  const std::size_t bytes = gpu::embedding_backward_scratch_bytes(count, vocab);
  device_array<char> scratch(bytes);
  gpu::embedding_forward(gtable.data(), vocab, width, gtokens.data(), count, gout.data(), nullptr);
  EXPECT_EQ(gout.get(), out);
  gpu::embedding_backward(gdout.data(), gtokens.data(), count, vocab, width, gdtable.data(),
                          scratch.data(), bytes, nullptr);
  const auto first = gdtable.get();
  EXPECT_CLOSE(first, dtable, fp32_bound, "embedding dtable");
  gdtable.set(std::vector<float>(dtable.size(), 0.0f));
  gpu::embedding_backward(gdout.data(), gtokens.data(), count, vocab, width, gdtable.data(),
                          scratch.data(), bytes, nullptr);
  EXPECT_EQ(gdtable.get(), first);
}

TEST(CudaOps, CrossEntropyMatchesTheCpuInPlaceAndFiniteDifferences) {
  TROUPE_SKIP_WITHOUT_GPU();
  const std::int64_t rows = 45, vocab = 32000, ld = 32004;
  auto logits = random_values(static_cast<std::size_t>(rows * ld), 23, 3.0f);
  std::vector<std::int32_t> targets(rows);
  for (std::int64_t r = 0; r < rows; ++r)
    targets[r] = static_cast<std::int32_t>((r * 7919) % vocab);
  targets[3] = -1;
  // The CPU reference on a dense copy.
  std::vector<float> dense(static_cast<std::size_t>(rows * vocab));
  for (std::int64_t r = 0; r < rows; ++r)
    std::copy_n(logits.begin() + r * ld, vocab, dense.begin() + r * vocab);
  std::vector<float> losses(rows), d(dense.size());
  std::int64_t labelled = 0;
  const double total = cpu::cross_entropy_forward(dense.data(), targets.data(), rows, vocab,
                                                  losses.data(), &labelled);
  const float scale = 1.0f / static_cast<float>(labelled);
  cpu::cross_entropy_backward(dense.data(), targets.data(), rows, vocab, scale, d.data());
  device_array<float> glogits(logits), glosses(rows), glse(rows);
  device_array<std::int32_t> gtargets(targets);
  device_array<double> gtotal(1);
  device_array<std::int64_t> glabelled(1);
  gpu::cross_entropy_forward(glogits.data(), ld, gtargets.data(), rows, vocab, glosses.data(),
                             glse.data(), nullptr);
  gpu::sum_losses(glosses.data(), gtargets.data(), rows, gtotal.data(), glabelled.data(), nullptr);
  EXPECT_CLOSE(glosses.get(), losses, fp32_bound, "cross-entropy losses");
  EXPECT_NEAR(gtotal.get()[0], total, 1e-5 * std::fabs(total));
  EXPECT_EQ(glabelled.get()[0], labelled);
  // Backward in place over the logits (the fused head's way).
  gpu::cross_entropy_backward(glogits.data(), ld, gtargets.data(), glse.data(), rows, vocab, scale,
                              glogits.data(), nullptr);
  const auto in_place = glogits.get();
  std::vector<float> gd(d.size());
  for (std::int64_t r = 0; r < rows; ++r)
    std::copy_n(in_place.begin() + r * ld, vocab, gd.begin() + r * vocab);
  EXPECT_CLOSE(gd, d, fp32_bound, "cross-entropy dlogits");
  // Finite differences of the summed loss on a small vocabulary.
  const std::int64_t small = 50;
  const auto x = random_values(static_cast<std::size_t>(rows * small), 24, 2.0f);
  std::vector<std::int32_t> t2(rows);
  for (std::int64_t r = 0; r < rows; ++r) t2[r] = static_cast<std::int32_t>(r % small);
  device_array<std::int32_t> gt2(t2);
  auto loss_of = [&](const std::vector<float>& v) {
    device_array<float> l(v), out(rows), lse(rows);
    gpu::cross_entropy_forward(l.data(), small, gt2.data(), rows, small, out.data(), lse.data(),
                               nullptr);
    return out.get();
  };
  device_array<float> gx(x), gl(rows), gls(rows), gdx(x.size());
  gpu::cross_entropy_forward(gx.data(), small, gt2.data(), rows, small, gl.data(), gls.data(),
                             nullptr);
  gpu::cross_entropy_backward(gx.data(), small, gt2.data(), gls.data(), rows, small, 1.0f,
                              gdx.data(), nullptr);
  EXPECT_FD(finite_difference_error(loss_of, x, std::vector<float>(rows, 1.0f), gdx.get(), 25),
            "cross-entropy dlogits");
}

/// Logits whose choices are apart (a shuffled ramp per token over [-4, 1): 5/64 between
/// neighbours, the selected ones where the sigmoid's slope is large), so a finite-difference
/// step of 1e-2 never changes which experts are selected (with one group: group sums of a ramp
/// can tie; the group limit is held to the CPU above).
std::vector<float> separated_logits(std::int64_t tokens, std::int64_t experts, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> logits(static_cast<std::size_t>(tokens * experts));
  std::vector<float> ramp(static_cast<std::size_t>(experts));
  for (std::int64_t e = 0; e < experts; ++e)
    ramp[e] = -4.0f + 5.0f * static_cast<float>(e) / static_cast<float>(experts);
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::shuffle(ramp.begin(), ramp.end(), rng);
    std::copy(ramp.begin(), ramp.end(), logits.begin() + t * experts);
  }
  return logits;
}

TEST(CudaOps, RouterAndBalanceLossMatchTheCpuAndFiniteDifferences) {
  TROUPE_SKIP_WITHOUT_GPU();
  struct router_case {
    std::int64_t experts, groups, topk_groups, topk;
  };
  for (const router_case rc :
       {router_case{64, 8, 4, 6}, {256, 8, 4, 8}, {16, 1, 1, 2}, {512, 16, 4, 8}}) {
    const std::int64_t sequences = 3, length = 50, tokens = sequences * length;
    cpu::router_shape cs{rc.experts, rc.groups, rc.topk_groups, rc.topk, true, 2.5f};
    gpu::router_shape gs{rc.experts, rc.groups, rc.topk_groups, rc.topk, true, 2.5f};
    const auto logits = random_values(static_cast<std::size_t>(tokens * rc.experts), 26, 2.0f);
    const auto bias = random_values(static_cast<std::size_t>(rc.experts), 27, 0.1f);
    const std::size_t pairs = static_cast<std::size_t>(tokens * rc.topk);
    std::vector<float> scores(logits.size()), gates(pairs);
    std::vector<std::int32_t> selected(pairs);
    cpu::router_forward(cs, logits.data(), bias.data(), scores.data(), selected.data(),
                        gates.data(), tokens);
    device_array<float> gl(logits), gb(bias), gscores(scores.size()), ggates(pairs);
    device_array<std::int32_t> gsel(pairs);
    gpu::router_forward(gs, gl.data(), gb.data(), gscores.data(), gsel.data(), ggates.data(),
                        tokens, nullptr);
    EXPECT_EQ(gsel.get(), selected) << rc.experts << " experts";
    EXPECT_CLOSE(gscores.get(), scores, fp32_bound, "router scores");
    EXPECT_CLOSE(ggates.get(), gates, fp32_bound, "router gates");
    // Backward through the gates, and the balance loss both ways.
    const auto d_gates = random_values(pairs, 28);
    std::vector<float> d_logits(logits.size(), 0.0f);
    cpu::router_backward(cs, scores.data(), selected.data(), d_gates.data(), d_logits.data(),
                         tokens);
    const double loss =
        cpu::balance_loss_forward(cs, scores.data(), selected.data(), sequences, length, 0.003);
    cpu::balance_loss_backward(cs, scores.data(), selected.data(), sequences, length, 0.003, 1.0f,
                               d_logits.data());
    device_array<float> gdg(d_gates), gdl(logits.size());
    const std::size_t bytes = gpu::balance_loss_scratch_bytes(sequences, length, rc.experts);
    device_array<char> scratch(bytes);
    device_array<float> gloss(1);
    gpu::router_backward(gs, gscores.data(), gsel.data(), gdg.data(), gdl.data(), tokens, nullptr);
    gpu::balance_loss_forward(gs, gscores.data(), gsel.data(), sequences, length, 0.003,
                              gloss.data(), scratch.data(), bytes, nullptr);
    gpu::balance_loss_backward(gs, gscores.data(), gsel.data(), sequences, length, 0.003, 1.0f,
                               gdl.data(), scratch.data(), bytes, nullptr);
    EXPECT_NEAR(gloss.get()[0], loss, 1e-6 * std::fabs(loss));  // a float of the float64 sum
    EXPECT_CLOSE(gdl.get(), d_logits, fp32_bound, "router + balance d_logits");
    std::vector<std::int64_t> counts(static_cast<std::size_t>(rc.experts), 0);
    cpu::count_selections(selected.data(), static_cast<std::int64_t>(pairs), counts.data());
    device_array<std::int64_t> gcounts(counts.size());
    gpu::count_selections(gsel.data(), static_cast<std::int64_t>(pairs), gcounts.data(), nullptr);
    EXPECT_EQ(gcounts.get(), counts);
  }
  {
    // Ties: logits of three levels and no bias, so groups and experts tie everywhere; the lower
    // id wins each tie on both sides.
    const std::int64_t experts = 64, tokens = 200;
    auto logits = random_values(static_cast<std::size_t>(tokens * experts), 35, 2.0f);
    for (float& v : logits) v = v > 0.7f ? 1.0f : v < -0.7f ? -1.0f : 0.0f;
    cpu::router_shape cs{experts, 8, 4, 6, true, 2.5f};
    gpu::router_shape gs{experts, 8, 4, 6, true, 2.5f};
    std::vector<float> scores(logits.size()), gates(static_cast<std::size_t>(tokens * 6));
    std::vector<std::int32_t> selected(gates.size());
    cpu::router_forward(cs, logits.data(), nullptr, scores.data(), selected.data(), gates.data(),
                        tokens);
    device_array<float> gl(logits), gscores(scores.size()), ggates(gates.size());
    device_array<std::int32_t> gsel(gates.size());
    gpu::router_forward(gs, gl.data(), nullptr, gscores.data(), gsel.data(), ggates.data(), tokens,
                        nullptr);
    EXPECT_EQ(gsel.get(), selected) << "tied choices";
    EXPECT_CLOSE(ggates.get(), gates, fp32_bound, "tied router gates");
  }
  {
    // Node-limited routing: the groups are hosts named per expert (5 hosts, uneven), M = 2, each
    // host scored by its best 3 choice values.
    const std::int64_t experts = 64, tokens = 150;
    std::vector<std::int32_t> node_of(static_cast<std::size_t>(experts));
    for (std::int64_t e = 0; e < experts; ++e)
      node_of[static_cast<std::size_t>(e)] = static_cast<std::int32_t>((e * 7 + e / 9) % 5);
    device_array<std::int32_t> gnode(node_of);
    cpu::router_shape cs{experts, 5, 2, 6, true, 2.5f, node_of.data(), 3};
    gpu::router_shape gs{experts, 5, 2, 6, true, 2.5f, gnode.data(), 3};
    const auto logits = random_values(static_cast<std::size_t>(tokens * experts), 31, 2.0f);
    const auto bias = random_values(static_cast<std::size_t>(experts), 32, 0.1f);
    std::vector<float> scores(logits.size()), gates(static_cast<std::size_t>(tokens * 6));
    std::vector<std::int32_t> selected(gates.size());
    cpu::router_forward(cs, logits.data(), bias.data(), scores.data(), selected.data(),
                        gates.data(), tokens);
    device_array<float> gl(logits), gb(bias), gscores(scores.size()), ggates(gates.size());
    device_array<std::int32_t> gsel(gates.size());
    gpu::router_forward(gs, gl.data(), gb.data(), gscores.data(), gsel.data(), ggates.data(),
                        tokens, nullptr);
    EXPECT_EQ(gsel.get(), selected) << "node-limited routing";
    EXPECT_CLOSE(ggates.get(), gates, fp32_bound, "node-limited router gates");
    // Backward and the balance loss take the same shape (5 hosts do not divide 64 experts).
    const auto d_gates = random_values(gates.size(), 33);
    std::vector<float> d_logits(logits.size(), 0.0f);
    cpu::router_backward(cs, scores.data(), selected.data(), d_gates.data(), d_logits.data(),
                         tokens);
    device_array<float> gdg(d_gates), gdl(logits.size());
    gpu::router_backward(gs, gscores.data(), gsel.data(), gdg.data(), gdl.data(), tokens, nullptr);
    const std::size_t bytes = gpu::balance_loss_scratch_bytes(3, 50, experts);
    device_array<char> scratch(bytes);
    device_array<float> gloss(1);
    gpu::balance_loss_forward(gs, gscores.data(), gsel.data(), 3, 50, 0.003, gloss.data(),
                              scratch.data(), bytes, nullptr);
    EXPECT_NEAR(gloss.get()[0],
                cpu::balance_loss_forward(cs, scores.data(), selected.data(), 3, 50, 0.003), 1e-5);
    EXPECT_CLOSE(gdl.get(), d_logits, fp32_bound, "node-limited router d_logits");
  }
  // Finite differences on logits that keep their selection under the step.
  const std::int64_t sequences = 2, length = 20, tokens = sequences * length;
  gpu::router_shape gs{64, 1, 1, 6, true, 2.5f};
  const auto logits = separated_logits(tokens, 64, 29);
  const auto r = random_values(static_cast<std::size_t>(tokens * 6), 30);
  device_array<float> gl(logits), gscores(logits.size()), ggates(r.size()), gr(r),
      gdl(logits.size());
  device_array<std::int32_t> gsel(r.size());
  gpu::router_forward(gs, gl.data(), nullptr, gscores.data(), gsel.data(), ggates.data(), tokens,
                      nullptr);
  gpu::router_backward(gs, gscores.data(), gsel.data(), gr.data(), gdl.data(), tokens, nullptr);
  auto gates_of = [&](const std::vector<float>& v) {
    device_array<float> a(v), s(v.size()), g(r.size());
    device_array<std::int32_t> sel(r.size());
    gpu::router_forward(gs, a.data(), nullptr, s.data(), sel.data(), g.data(), tokens, nullptr);
    return g.get();
  };
  EXPECT_FD(finite_difference_error(gates_of, logits, r, gdl.get(), 31), "router d_logits");
  const std::size_t bytes = gpu::balance_loss_scratch_bytes(sequences, length, 64);
  device_array<char> scratch(bytes);
  device_array<float> gdb(logits.size());
  gpu::balance_loss_backward(gs, gscores.data(), gsel.data(), sequences, length, 0.1, 1.0f,
                             gdb.data(), scratch.data(), bytes, nullptr);
  auto loss_of = [&](const std::vector<float>& v) {
    device_array<float> a(v), s(v.size()), g(r.size());
    device_array<std::int32_t> sel(r.size());
    device_array<float> out(1);
    gpu::router_forward(gs, a.data(), nullptr, s.data(), sel.data(), g.data(), tokens, nullptr);
    gpu::balance_loss_forward(gs, s.data(), sel.data(), sequences, length, 0.1, out.data(),
                              scratch.data(), bytes, nullptr);
    return out.get();
  };
  EXPECT_FD(finite_difference_error(loss_of, logits, {1.0f}, gdb.get(), 32),
            "balance loss d_logits");
}

TEST(CudaOps, ExpertPermutationMatchesTheCpuGroupingAndCombine) {
  TROUPE_SKIP_WITHOUT_GPU();
  const std::int64_t tokens = 300, topk = 6, experts = 64, width = 256;
  std::vector<std::int32_t> selected(static_cast<std::size_t>(tokens * topk));
  std::mt19937 rng(33);
  for (std::int64_t t = 0; t < tokens; ++t) {  // distinct experts per token, ascending
    std::vector<std::int32_t> all(experts);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + topk);
    std::copy_n(all.begin(), topk, selected.begin() + t * topk);
  }
  for (std::int64_t t = 0; t < 40; ++t) selected[t * topk] = 3;  // an expert far more loaded
  cpu::expert_grouping grouping;
  cpu::group_by_expert(selected.data(), tokens, topk, experts, grouping);
  const std::int64_t pairs = tokens * topk;
  device_array<std::int32_t> gsel(selected);
  device_array<std::int64_t> order(pairs), position(pairs), offsets(experts + 1);
  const std::size_t bytes = gpu::group_by_expert_scratch_bytes(pairs, experts);
  device_array<char> scratch(bytes);
  gpu::group_by_expert(gsel.data(), tokens, topk, experts,
                       {order.data(), position.data(), offsets.data()}, scratch.data(), bytes,
                       nullptr);
  EXPECT_EQ(order.get(), grouping.order);
  EXPECT_EQ(position.get(), grouping.position);
  EXPECT_EQ(offsets.get(), grouping.offsets);

  const auto x = random_values(static_cast<std::size_t>(tokens * width), 34);
  std::vector<float> rows(static_cast<std::size_t>(pairs * width));
  cpu::gather_expert_rows(x.data(), grouping.order.data(), topk, width, rows.data(), 0, pairs);
  device_array<float> gx(x), grows(rows.size());
  gpu::gather_expert_rows(gx.data(), order.data(), topk, width, grows.data(), 0, pairs, nullptr);
  EXPECT_EQ(grows.get(), rows);

  const auto expert_out = random_values(rows.size(), 35);
  const auto gates = random_values(static_cast<std::size_t>(pairs), 36);
  const auto shared = random_values(x.size(), 37);
  std::vector<float> y(shared);
  cpu::combine_forward(expert_out.data(), gates.data(), grouping.position.data(), topk, width,
                       y.data(), 0, tokens);
  device_array<float> gout(expert_out), ggates(gates), gy(shared);
  gpu::combine_forward(gout.data(), ggates.data(), position.data(), topk, width, gy.data(), tokens,
                       nullptr);
  EXPECT_CLOSE(gy.get(), y, fp32_bound, "combine y");

  const auto dy = random_values(x.size(), 38);
  std::vector<float> d_gates(gates.size()), d_rows(rows.size());
  cpu::combine_backward(dy.data(), expert_out.data(), gates.data(), grouping.order.data(), topk,
                        width, d_gates.data(), d_rows.data(), 0, pairs);
  device_array<float> gdy(dy), gdg(gates.size()), gdr(rows.size());
  gpu::combine_backward(gdy.data(), gout.data(), ggates.data(), order.data(), topk, width,
                        gdg.data(), gdr.data(), 0, pairs, nullptr);
  EXPECT_CLOSE(gdg.get(), d_gates, fp32_bound, "combine d_gates");
  EXPECT_CLOSE(gdr.get(), d_rows, fp32_bound, "combine d_rows");
  {  // The row gradients rounded to BF16 instead: exactly the f32 ones rounded, the same d_gates.
    device_array<float> gdg16(gates.size());
    device_array<std::uint16_t> gdr16(rows.size());
    gpu::combine_backward(gdy.data(), gout.data(), ggates.data(), order.data(), topk, width,
                          gdg16.data(), nullptr, 0, pairs, nullptr, gdr16.data());
    EXPECT_EQ(gdg16.get(), gdg.get());
    const auto f32 = gdr.get();
    const auto rounded = gdr16.get();
    for (std::size_t i = 0; i < f32.size(); ++i) ASSERT_EQ(rounded[i], float_to_bf16(f32[i])) << i;
  }

  const auto dx0 = random_values(x.size(), 39);
  std::vector<float> dx(dx0);
  cpu::scatter_add_rows(d_rows.data(), grouping.position.data(), topk, width, dx.data(), 0, tokens);
  device_array<float> gdx(dx0);
  gpu::scatter_add_rows(gdr.data(), position.data(), topk, width, gdx.data(), tokens, nullptr);
  EXPECT_CLOSE(gdx.get(), dx, fp32_bound, "scatter-add dx");

  {  // Rows held in BF16 (the experts' BF16 outputs): the f32 passes on the rows widened from
     // the same bits, bit for bit.
    std::vector<std::uint16_t> out_bits, d_row_bits;
    std::vector<float> out_wide, d_rows_wide;
    for (float v : expert_out) out_bits.push_back(float_to_bf16(v));
    for (float v : d_rows) d_row_bits.push_back(float_to_bf16(v));
    for (std::uint16_t b : out_bits) out_wide.push_back(bf16_to_float(b));
    for (std::uint16_t b : d_row_bits) d_rows_wide.push_back(bf16_to_float(b));
    device_array<std::uint16_t> gout16(out_bits), gdrows16(d_row_bits), gdr16(rows.size());
    device_array<float> gout_wide(out_wide), gdrows_wide(d_rows_wide);
    device_array<float> gy16(shared), gy_wide(shared), gdx16(dx0), gdx_wide(dx0);
    device_array<float> gdg16(gates.size()), gdg_wide(gates.size());
    gpu::combine_forward(gout16.data(), ggates.data(), position.data(), topk, width, gy16.data(),
                         tokens, nullptr);
    gpu::combine_forward(gout_wide.data(), ggates.data(), position.data(), topk, width,
                         gy_wide.data(), tokens, nullptr);
    EXPECT_EQ(gy16.get(), gy_wide.get()) << "combine of BF16 rows";
    gpu::combine_backward(gdy.data(), gout16.data(), ggates.data(), order.data(), topk, width,
                          gdg16.data(), nullptr, 0, pairs, nullptr, gdr16.data());
    gpu::combine_backward(gdy.data(), gout_wide.data(), ggates.data(), order.data(), topk, width,
                          gdg_wide.data(), gdr.data(), 0, pairs, nullptr);
    // d_gates: the same products summed in another order (four columns per thread); the row
    // gradients: the same products rounded.
    EXPECT_CLOSE(gdg16.get(), gdg_wide.get(), fp32_bound, "combine d_gates from BF16 rows");
    const auto f32_rows = gdr.get();
    const auto bf16_rows = gdr16.get();
    for (std::size_t i = 0; i < f32_rows.size(); ++i)
      ASSERT_EQ(bf16_rows[i], float_to_bf16(f32_rows[i])) << "d_rows from BF16 rows " << i;
    // Token by token (each dy row read once for its slots): the same.
    ASSERT_TRUE(gpu::combine_backward_by_token_fits(gdy.data(), gout16.data(), gdr16.data(), topk,
                                                    width, tokens));
    device_array<float> gdg_tokens(gates.size());
    device_array<std::uint16_t> gdr_tokens(rows.size());
    gpu::combine_backward_by_token(gdy.data(), gout16.data(), ggates.data(), position.data(), topk,
                                   width, gdg_tokens.data(), gdr_tokens.data(), tokens, nullptr);
    EXPECT_CLOSE(gdg_tokens.get(), gdg_wide.get(), fp32_bound, "combine d_gates by token");
    EXPECT_EQ(gdr_tokens.get(), bf16_rows) << "d_rows by token";
    gpu::scatter_add_rows(gdrows16.data(), position.data(), topk, width, gdx16.data(), tokens,
                          nullptr);
    gpu::scatter_add_rows(gdrows_wide.data(), position.data(), topk, width, gdx_wide.data(), tokens,
                          nullptr);
    EXPECT_EQ(gdx16.get(), gdx_wide.get()) << "scatter-add of BF16 row gradients";
  }
}

/// MLA's attention layout: q [B, L, H, qk], k_nope and v inside kv [B, L, H, nope + v], the rope
/// key [B, L, rope] shared by the heads; o [B, L, H, v].
struct mla_attention {
  std::int64_t batch, length, heads, nope, rope, v;
  std::int64_t qk() const { return nope + rope; }
  std::int64_t kv_width() const { return heads * (nope + v); }
  gpu::attention_problem problem() const {
    return {batch, heads, length, qk(), rope, v, 1.0f / std::sqrt(static_cast<float>(qk()))};
  }
  gpu::attention_operand q(const float* data) const {
    return {data, length * heads * qk(), qk(), heads * qk()};
  }
  gpu::attention_operand k(const float* kv) const {
    return {kv, length * kv_width(), nope + v, kv_width()};
  }
  gpu::attention_operand key_rope(const float* data) const {
    return {data, length * rope, 0, rope};
  }
  gpu::attention_operand values(const float* kv) const {
    return {kv + nope, length * kv_width(), nope + v, kv_width()};
  }
  gpu::attention_operand o(const float* data) const {
    return {data, length * heads * v, v, heads * v};
  }
  static gpu::attention_result out(gpu::attention_operand x) {
    return {const_cast<float*>(x.data), x.batch_stride, x.head_stride, x.row_stride};
  }
};

TEST(CudaOps, FlashAttentionMatchesTheCpuAndFiniteDifferences) {
  TROUPE_SKIP_WITHOUT_GPU();
  for (const mla_attention m : {mla_attention{2, 77, 3, 128, 64, 128}, {1, 130, 2, 32, 16, 24}}) {
    const auto problem = m.problem();
    const auto q =
        random_values(static_cast<std::size_t>(m.batch * m.length * m.heads * m.qk()), 40);
    const auto kv = random_values(static_cast<std::size_t>(m.batch * m.length * m.kv_width()), 41);
    const auto rope = random_values(static_cast<std::size_t>(m.batch * m.length * m.rope), 42);
    const auto d_o =
        random_values(static_cast<std::size_t>(m.batch * m.length * m.heads * m.v), 43);
    // The CPU reference per (sequence, head), keys assembled as [k_nope_h, rope key].
    std::vector<float> o(d_o.size()), lse(static_cast<std::size_t>(m.batch * m.heads * m.length));
    std::vector<float> dq(q.size()), dkv(kv.size(), 0.0f),
        d_rope_heads(static_cast<std::size_t>(m.batch * m.heads * m.length * m.rope));
    for (std::int64_t b = 0; b < m.batch; ++b)
      for (std::int64_t h = 0; h < m.heads; ++h) {
        std::vector<float> keys(static_cast<std::size_t>(m.length * m.qk())), d_keys(keys.size());
        for (std::int64_t i = 0; i < m.length; ++i) {
          const float* row = kv.data() + (b * m.length + i) * m.kv_width() + h * (m.nope + m.v);
          std::copy_n(row, m.nope, keys.begin() + i * m.qk());
          std::copy_n(rope.begin() + (b * m.length + i) * m.rope, m.rope,
                      keys.begin() + i * m.qk() + m.nope);
        }
        cpu::attention_shape shape{m.length, m.qk(),       m.v,           m.heads * m.qk(),
                                   m.qk(),   m.kv_width(), m.heads * m.v, problem.scale};
        const std::int64_t q_at = b * m.length * m.heads * m.qk() + h * m.qk();
        const std::int64_t v_at = b * m.length * m.kv_width() + h * (m.nope + m.v) + m.nope;
        const std::int64_t o_at = b * m.length * m.heads * m.v + h * m.v;
        float* lse_bh = lse.data() + (b * m.heads + h) * m.length;
        std::vector<float> scratch(
            static_cast<std::size_t>(cpu::attention_backward_scratch(m.length)));
        cpu::causal_attention_forward(shape, q.data() + q_at, keys.data(), kv.data() + v_at,
                                      o.data() + o_at, lse_bh, scratch.data());
        cpu::causal_attention_backward(shape, q.data() + q_at, keys.data(), kv.data() + v_at,
                                       o.data() + o_at, d_o.data() + o_at, lse_bh, dq.data() + q_at,
                                       d_keys.data(), dkv.data() + v_at, scratch.data());
        for (std::int64_t i = 0; i < m.length; ++i) {
          std::copy_n(d_keys.begin() + i * m.qk(), m.nope,
                      dkv.begin() + (b * m.length + i) * m.kv_width() + h * (m.nope + m.v));
          std::copy_n(d_keys.begin() + i * m.qk() + m.nope, m.rope,
                      d_rope_heads.begin() + ((b * m.heads + h) * m.length + i) * m.rope);
        }
      }
    device_array<float> gq(q), gkv(kv), grope(rope), go(o.size()), glse(lse.size()), gdo(d_o),
        gdq(q.size()), gdkv(kv.size()), gdrope(d_rope_heads.size()),
        scratch(static_cast<std::size_t>(gpu::attention_backward_scratch(problem)));
    const gpu::attention_result d_rope_out{gdrope.data(), m.heads * m.length * m.rope,
                                           m.length * m.rope, m.rope};
    gpu::attention_forward(problem, m.q(gq.data()), m.k(gkv.data()), m.key_rope(grope.data()),
                           m.values(gkv.data()), mla_attention::out(m.o(go.data())), glse.data(),
                           nullptr);
    gpu::attention_backward(problem, m.q(gq.data()), m.k(gkv.data()), m.key_rope(grope.data()),
                            m.values(gkv.data()), m.o(go.data()), m.o(gdo.data()), glse.data(),
                            mla_attention::out(m.q(gdq.data())),
                            mla_attention::out(m.k(gdkv.data())), d_rope_out,
                            mla_attention::out(m.values(gdkv.data())), scratch.data(), nullptr);
    EXPECT_CLOSE(go.get(), o, fp32_bound, "attention o");
    EXPECT_CLOSE(glse.get(), lse, fp32_bound, "attention lse");
    EXPECT_CLOSE(gdq.get(), dq, fp32_bound, "attention dq");
    EXPECT_CLOSE(gdkv.get(), dkv, fp32_bound, "attention dk_nope, dv");
    EXPECT_CLOSE(gdrope.get(), d_rope_heads, fp32_bound, "attention d rope key (per head)");

    // Finite differences of the GPU forward along q, kv and the rope key.
    auto o_of = [&](const std::vector<float>& qs, const std::vector<float>& kvs,
                    const std::vector<float>& ropes) {
      device_array<float> a(qs), b(kvs), c(ropes), out(o.size()), l(lse.size());
      gpu::attention_forward(problem, m.q(a.data()), m.k(b.data()), m.key_rope(c.data()),
                             m.values(b.data()), mla_attention::out(m.o(out.data())), l.data(),
                             nullptr);
      return out.get();
    };
    std::vector<float> d_rope(rope.size(), 0.0f);  // summed over heads
    const auto per_head = gdrope.get();
    for (std::int64_t b = 0; b < m.batch; ++b)
      for (std::int64_t h = 0; h < m.heads; ++h)
        for (std::int64_t i = 0; i < m.length * m.rope; ++i)
          d_rope[b * m.length * m.rope + i] += per_head[(b * m.heads + h) * m.length * m.rope + i];
    EXPECT_FD(finite_difference_error([&](const auto& v) { return o_of(v, kv, rope); }, q, d_o,
                                      gdq.get(), 44),
              "attention dq");
    EXPECT_FD(finite_difference_error([&](const auto& v) { return o_of(q, v, rope); }, kv, d_o,
                                      gdkv.get(), 45),
              "attention dkv");
    EXPECT_FD(finite_difference_error([&](const auto& v) { return o_of(q, kv, v); }, rope, d_o,
                                      d_rope, 46),
              "attention d rope key");
  }
}

/// Which kernels an attention run takes, forward or backward.
enum class attention_kernels { fp32, own_bf16, cudnn };

struct attention_results {
  std::vector<float> o, lse, dq, dkv, d_rope;
};

/// Random q, kv, rope key and dO for `m` (seeds `seed` to seed + 3) on the device, and runs of
/// them: forward by one set of kernels, backward by another over the forward's o and lse.
struct attention_case {
  attention_case(const mla_attention& shape, std::uint32_t seed)
      : m(shape),
        problem(shape.problem()),
        q(random_values(static_cast<std::size_t>(m.batch * m.length * m.heads * m.qk()), seed)),
        kv(random_values(static_cast<std::size_t>(m.batch * m.length * m.kv_width()), seed + 1)),
        rope(random_values(static_cast<std::size_t>(m.batch * m.length * m.rope), seed + 2)),
        d_o(random_values(static_cast<std::size_t>(m.batch * m.length * m.heads * m.v), seed + 3)),
        gq(q),
        gkv(kv),
        grope(rope),
        gdo(d_o) {}

  attention_results run(attention_kernels forward, attention_kernels backward) {
    device_array<float> go(d_o.size()),
        glse(static_cast<std::size_t>(m.batch * m.heads * m.length)), gdq(q.size()),
        gdkv(kv.size()), gdrope(static_cast<std::size_t>(m.batch * m.heads * m.length * m.rope)),
        scratch(static_cast<std::size_t>(gpu::attention_backward_scratch(problem)));
    const gpu::attention_result d_rope_out{gdrope.data(), m.heads * m.length * m.rope,
                                           m.length * m.rope, m.rope};
    // The own BF16 kernels' staging: the caller's for the forward, their own for the backward;
    // cuDNN's the caller's for both.
    device_array<std::uint16_t> staging(gpu::attention_bf16_staging_bytes(problem, false) / 2);
    const bool cudnn = forward == attention_kernels::cudnn || backward == attention_kernels::cudnn;
    const std::size_t cudnn_bytes =
        cudnn ? std::max(gpu::attention_cudnn_staging_bytes(problem, false),
                         gpu::attention_cudnn_staging_bytes(problem, true))
              : 0;
    device_array<std::uint16_t> cudnn_staging((cudnn_bytes + 1) / 2);
    const auto qo = m.q(gq.data()), ko = m.k(gkv.data()), ro = m.key_rope(grope.data()),
               vo = m.values(gkv.data()), oo = m.o(go.data()), doo = m.o(gdo.data());
    const auto o_out = mla_attention::out(oo), dq_out = mla_attention::out(m.q(gdq.data())),
               dk_out = mla_attention::out(m.k(gdkv.data())),
               dv_out = mla_attention::out(m.values(gdkv.data()));
    if (forward == attention_kernels::fp32)
      gpu::attention_forward(problem, qo, ko, ro, vo, o_out, glse.data(), nullptr);
    else if (forward == attention_kernels::own_bf16)
      gpu::attention_forward_bf16(problem, qo, ko, ro, vo, o_out, glse.data(), nullptr,
                                  staging.data());
    else
      gpu::attention_forward_cudnn(problem, qo, ko, ro, vo, o_out, glse.data(), nullptr,
                                   cudnn_staging.data());
    if (backward == attention_kernels::fp32)
      gpu::attention_backward(problem, qo, ko, ro, vo, oo, doo, glse.data(), dq_out, dk_out,
                              d_rope_out, dv_out, scratch.data(), nullptr);
    else if (backward == attention_kernels::own_bf16)
      gpu::attention_backward_bf16(problem, qo, ko, ro, vo, oo, doo, glse.data(), dq_out, dk_out,
                                   d_rope_out, dv_out, scratch.data(), nullptr);
    else
      gpu::attention_backward_cudnn(problem, qo, ko, ro, vo, oo, doo, glse.data(), dq_out, dk_out,
                                    d_rope_out, dv_out, nullptr, cudnn_staging.data());
    return {go.get(), glse.get(), gdq.get(), gdkv.get(), gdrope.get()};
  }

  mla_attention m;
  gpu::attention_problem problem;
  std::vector<float> q, kv, rope, d_o;
  device_array<float> gq, gkv, grope, gdo;
};

/// f(what, relative error of `low` to `exact`) for each result.
template <class F>
void for_each_error(const attention_results& low, const attention_results& exact, F&& f) {
  const std::pair<const char*, std::pair<const std::vector<float>*, const std::vector<float>*>>
      pairs[] = {{"o", {&low.o, &exact.o}},
                 {"lse", {&low.lse, &exact.lse}},
                 {"dq", {&low.dq, &exact.dq}},
                 {"dk_nope, dv", {&low.dkv, &exact.dkv}},
                 {"d rope key (per head)", {&low.d_rope, &exact.d_rope}}};
  for (const auto& [what, values] : pairs) f(what, relative_error(*values.first, *values.second));
}

// model.precision = "bf16": the tensor-core flash attention against the FP32 kernels (checked
// against the CPU above), forward and backward, within BF16's bound (operands rounded to 8 bits
// of mantissa: relative errors of a few 1e-3), and farther from them than FP32 reordering gets,
// so the tensor cores did it. A head size with no BF16 kernel runs the FP32 one, bit for bit.
TEST(CudaOps, Bf16FlashAttentionIsWithinBf16OfFp32) {
  TROUPE_SKIP_WITHOUT_GPU();
  for (const mla_attention m : {mla_attention{2, 77, 3, 128, 64, 128},
                                {2, 150, 4, 64, 32, 64},
                                {1, 70, 2, 16, 16, 16},
                                {1, 130, 2, 32, 16, 24}}) {
    attention_case c(m, 50);
    const bool tensor_cores = gpu::attention_bf16_supported(c.problem);
    const attention_results exact = c.run(attention_kernels::fp32, attention_kernels::fp32),
                            low = c.run(attention_kernels::own_bf16, attention_kernels::own_bf16);
    std::printf("[ bf16 attention qk %lld v %lld, length %lld ] %s\n",
                static_cast<long long>(m.qk()), static_cast<long long>(m.v),
                static_cast<long long>(m.length),
                tensor_cores ? "tensor cores" : "no BF16 kernel for this size: the FP32 one");
    for_each_error(low, exact, [&](const char* what, double error) {
      std::printf("[ bf16 attention %s ] relative error to FP32 %.3g\n", what, error);
      if (tensor_cores) {
        EXPECT_LT(error, 2e-2) << what;
        EXPECT_GT(error, 1e-6) << what;
      } else {
        EXPECT_EQ(error, 0.0) << what;
      }
    });
  }
}

// model.precision = "bf16" takes cuDNN's fused attention where it runs (attention_cudnn.hpp): the
// same bound to the FP32 kernels as troupe's own BF16 kernels, on the small and the medium
// config's head sizes (qk 96 / v 64, qk 192 / v 128), and its lse is the own kernels' lse: its
// forward feeds their backward and theirs feeds its backward.
TEST(CudaOps, CudnnAttentionIsWithinBf16OfFp32AndSharesTheLse) {
  TROUPE_SKIP_WITHOUT_GPU();
  for (const mla_attention m : {mla_attention{2, 300, 4, 64, 32, 64}, {2, 257, 3, 128, 64, 128}}) {
    if (!gpu::attention_cudnn_supported(m.problem(), false) ||
        !gpu::attention_cudnn_supported(m.problem(), true))
      GTEST_SKIP() << "cuDNN's fused attention does not run qk " << m.qk() << " / v " << m.v
                   << " here (a build without the cuDNN frontend, no libcudnn.so.9 on the "
                      "library path, or TROUPE_ATTENTION=own; stderr says which)";
    attention_case c(m, 54);
    const attention_results exact = c.run(attention_kernels::fp32, attention_kernels::fp32);
    for (const auto& [name, forward, backward] :
         {std::tuple{"cuDNN", attention_kernels::cudnn, attention_kernels::cudnn},
          std::tuple{"cuDNN forward, own backward", attention_kernels::cudnn,
                     attention_kernels::own_bf16},
          std::tuple{"own forward, cuDNN backward", attention_kernels::own_bf16,
                     attention_kernels::cudnn}}) {
      for_each_error(c.run(forward, backward), exact, [&](const char* what, double error) {
        std::printf("[ %s attention qk %lld v %lld: %s ] relative error to FP32 %.3g\n", name,
                    static_cast<long long>(m.qk()), static_cast<long long>(m.v), what, error);
        EXPECT_LT(error, 2e-2) << name << ": " << what;
        EXPECT_GT(error, 1e-6) << name << ": " << what;
      });
    }
  }
}

TEST(CudaOps, AdamwAndClippingMatchTheHostUpdate) {
  TROUPE_SKIP_WITHOUT_GPU();
  // Sizes over one block and with a scalar tail; the last tensor starts one element into its
  // arrays, so the kernel's float4 path is refused for it.
  const std::vector<std::int64_t> sizes{5000, 7, 70000, 8196};
  const std::vector<std::int64_t> skip{0, 0, 0, 1};
  std::vector<std::vector<float>> values, grads;
  std::vector<std::vector<std::uint16_t>> m, v;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    values.push_back(random_values(static_cast<std::size_t>(sizes[t]), 50 + t));
    grads.push_back(random_values(static_cast<std::size_t>(sizes[t]), 60 + t, 3.0f));
    std::vector<std::uint16_t> mt(static_cast<std::size_t>(sizes[t])), vt(mt.size());
    const auto ms = random_values(mt.size(), 70 + t, 0.1f),
               vs = random_values(mt.size(), 80 + t, 0.1f);
    for (std::size_t i = 0; i < mt.size(); ++i) {
      mt[i] = float_to_bf16(ms[i]);
      vt[i] = float_to_bf16(vs[i] * vs[i]);
    }
    m.push_back(mt);
    v.push_back(vt);
  }
  // The clip scale from the global norm, on the device.
  std::vector<std::unique_ptr<device_array<float>>> gvalues, ggrads;
  std::vector<std::unique_ptr<device_array<std::uint16_t>>> gm, gv, gcopy;
  std::vector<gpu::gradient_tensor> norm_list;
  std::vector<gpu::adamw_tensor> adam_list;
  double norm_squared = 0.0;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    gvalues.push_back(std::make_unique<device_array<float>>(values[t]));
    ggrads.push_back(std::make_unique<device_array<float>>(grads[t]));
    gm.push_back(std::make_unique<device_array<std::uint16_t>>(m[t]));
    gv.push_back(std::make_unique<device_array<std::uint16_t>>(v[t]));
    // A BF16 copy of the new values for every tensor but the second (none there).
    gcopy.push_back(std::make_unique<device_array<std::uint16_t>>(m[t]));
    norm_list.push_back({ggrads[t]->data(), sizes[t]});
    adam_list.push_back({gvalues[t]->data() + skip[t], ggrads[t]->data() + skip[t],
                         gm[t]->data() + skip[t], gv[t]->data() + skip[t],
                         t != 1 ? gcopy[t]->data() + skip[t] : nullptr, sizes[t] - skip[t],
                         t != 1 ? 1 : 0});
    for (float g : grads[t]) norm_squared += static_cast<double>(g) * static_cast<double>(g);
  }
  device_array<gpu::gradient_tensor> gnorm_list(norm_list);
  const auto tensors = static_cast<std::int64_t>(sizes.size());
  const std::int64_t adam_blocks = gpu::adamw_plan(adam_list.data(), tensors);
  device_array<gpu::adamw_tensor> gadam_list(adam_list);
  const std::size_t bytes = gpu::gradient_norm_scratch_bytes(tensors);
  device_array<char> scratch(bytes);
  device_array<double> gnorm(1);
  device_array<float> gscale(1);
  const double clip = 1.0;
  gpu::gradient_norm_squared(gnorm_list.data(), tensors, gnorm.data(), scratch.data(), bytes,
                             nullptr);
  gpu::clip_scale(gnorm.data(), clip, gscale.data(), nullptr);
  EXPECT_NEAR(gnorm.get()[0], norm_squared, 1e-10 * norm_squared);
  {  // Each tensor's sum, the aligned ones by float4 and one starting a float into its array.
    std::vector<gpu::gradient_tensor> shifted(norm_list);
    shifted[2] = {ggrads[2]->data() + 1, sizes[2] - 1};
    device_array<gpu::gradient_tensor> gshifted(shifted);
    device_array<double> sums(sizes.size());
    gpu::gradient_sums(gshifted.data(), tensors, sums.data(), scratch.data(), bytes, nullptr);
    const auto got = sums.get();
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      double expected = 0.0;
      for (std::size_t i = t == 2 ? 1 : 0; i < grads[t].size(); ++i)
        expected += static_cast<double>(grads[t][i]) * static_cast<double>(grads[t][i]);
      EXPECT_NEAR(got[t], expected, 1e-10 * expected) << t;
    }
  }
  const double norm = std::sqrt(norm_squared);
  const float scale = static_cast<float>(clip / (norm + 1e-6));
  EXPECT_FLOAT_EQ(gscale.get()[0], scale);

  const double b1 = 0.9, b2 = 0.95, lr = 3e-3, wd = 0.1, eps = 1e-8;
  const std::int64_t step = 7;
  gpu::adamw_hyper hyper{static_cast<float>(lr),
                         static_cast<float>(b1),
                         static_cast<float>(b2),
                         static_cast<float>(eps),
                         static_cast<float>(wd),
                         static_cast<float>(1.0 - std::pow(b1, step)),
                         static_cast<float>(1.0 - std::pow(b2, step))};
  gpu::adamw_step(gadam_list.data(), tensors, adam_blocks, hyper, gscale.data(), nullptr);
  for (std::size_t t = 0; t < sizes.size(); ++t) {  // the host update of runtime/optim/adamw.cpp
    std::vector<float> p(values[t]);
    std::vector<std::uint16_t> mt(m[t]), vt(v[t]);
    const float decay = t != 1 ? 1.0f - hyper.lr * hyper.weight_decay : 1.0f;
    for (auto i = static_cast<std::size_t>(skip[t]); i < p.size(); ++i) {  // skipped: unchanged
      const float g = grads[t][i] * scale;
      const float m1 = hyper.beta1 * bf16_to_float(mt[i]) + (1.0f - hyper.beta1) * g;
      const float v1 = hyper.beta2 * bf16_to_float(vt[i]) + (1.0f - hyper.beta2) * g * g;
      p[i] = p[i] * decay -
             hyper.lr * (m1 / hyper.correction1) / (std::sqrt(v1 / hyper.correction2) + hyper.eps);
      mt[i] = float_to_bf16(m1);
      vt[i] = float_to_bf16(v1);
    }
    EXPECT_CLOSE(gvalues[t]->get(), p, 1e-6, "adamw values");
    if (t != 1) {  // the copy: exactly the new values rounded (the elements skipped: untouched)
      const auto got = gvalues[t]->get();
      const auto copy = gcopy[t]->get();
      for (std::size_t i = 0; i < p.size(); ++i)
        ASSERT_EQ(copy[i], i < static_cast<std::size_t>(skip[t]) ? m[t][i] : float_to_bf16(got[i]))
            << t << " " << i;
    }
    // Moments: BF16 roundings of nearly equal floats; at most one unit in the last place apart.
    const auto got_m = gm[t]->get(), got_v = gv[t]->get();
    for (std::size_t i = 0; i < p.size(); ++i) {
      ASSERT_LE(std::abs(static_cast<int>(got_m[i]) - static_cast<int>(mt[i])), 1) << t << " " << i;
      ASSERT_LE(std::abs(static_cast<int>(got_v[i]) - static_cast<int>(vt[i])), 1) << t << " " << i;
    }
  }
}

/// BF16 math: the reference multiplies the operands rounded to BF16 (round to nearest even) in
/// FP32 on the CPU, so only the order of the FP32 sums differs.
std::vector<float> rounded_if(bool bf16, std::vector<float> values) {
  if (bf16)
    for (float& v : values) v = bf16_to_float(float_to_bf16(v));
  return values;
}

/// The math and, for BF16, which tensor-core kernels (mma.sync, or Hopper's wgmma).
struct grouped_case {
  gpu::gemm_math math;
  gpu::grouped_gemm_kernels kernels;
};

/// Sets the grouped GEMMs' kernels for one test, back to automatic after it.
struct kernels_for_test {
  explicit kernels_for_test(gpu::grouped_gemm_kernels k) { gpu::set_grouped_gemm_kernels(k); }
  ~kernels_for_test() { gpu::set_grouped_gemm_kernels(gpu::grouped_gemm_kernels::automatic); }
};

class GroupedGemms : public ::testing::TestWithParam<grouped_case> {};

INSTANTIATE_TEST_SUITE_P(
    Math, GroupedGemms,
    ::testing::Values(grouped_case{gpu::gemm_math::exact, gpu::grouped_gemm_kernels::automatic},
                      grouped_case{gpu::gemm_math::bf16, gpu::grouped_gemm_kernels::mma_sync},
                      grouped_case{gpu::gemm_math::bf16, gpu::grouped_gemm_kernels::wgmma},
                      grouped_case{gpu::gemm_math::bf16, gpu::grouped_gemm_kernels::cutlass}),
    [](const auto& param_info) -> std::string {
      if (param_info.param.math == gpu::gemm_math::exact) return "fp32";
      switch (param_info.param.kernels) {
        case gpu::grouped_gemm_kernels::wgmma:
          return "bf16_wgmma";
        case gpu::grouped_gemm_kernels::cutlass:
          return "bf16_cutlass";
        default:
          return "bf16_mma";
      }
    });

/// Skips a CUTLASS case where troupe was built without it or the GPU is not a Hopper.
#define SKIP_UNLESS_KERNELS_RUN(kernels)                                                         \
  if ((kernels) == gpu::grouped_gemm_kernels::cutlass && !gpu::cutlass_grouped_gemm_available()) \
  GTEST_SKIP() << "troupe was built without CUTLASS's headers, or this GPU is not sm_90"

TEST_P(GroupedGemms, MatchOneCpuGemmPerExpert) {
  TROUPE_SKIP_WITHOUT_GPU();
  const gpu::gemm_math math = GetParam().math;
  SKIP_UNLESS_KERNELS_RUN(GetParam().kernels);
  const kernels_for_test chosen(GetParam().kernels);
  const bool bf16 = math == gpu::gemm_math::bf16;
  // 7 experts with 0, 1, 63, 64, 65, 130 and 3 rows; the inputs gathered through a permutation.
  const std::vector<std::int64_t> counts{0, 1, 63, 64, 65, 130, 3};
  std::vector<std::int64_t> offsets{0};
  for (auto c : counts) offsets.push_back(offsets.back() + c);
  // CUTLASS takes outputs whose rows are multiples of 4 floats: its case runs 96 x 80.
  const bool aligned = GetParam().kernels == gpu::grouped_gemm_kernels::cutlass;
  const std::int64_t rows = offsets.back(), groups = 7, topk = 2, n = aligned ? 96 : 94,
                     k = aligned ? 80 : 78;
  const std::int64_t tokens = (rows + topk - 1) / topk;
  std::vector<std::int64_t> order(static_cast<std::size_t>(rows));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(3));
  const auto x = random_values(static_cast<std::size_t>(tokens * k), 90);
  const auto dy = random_values(static_cast<std::size_t>(rows * n), 91);
  std::vector<std::vector<float>> w;
  for (std::int64_t g = 0; g < groups; ++g) w.push_back(random_values(n * k, 92 + g));
  // The CPU: one GEMM per expert on gathered rows.
  const auto xr = rounded_if(bf16, x), dyr = rounded_if(bf16, dy);
  std::vector<std::vector<float>> wr;
  for (const auto& weights : w) wr.push_back(rounded_if(bf16, weights));
  std::vector<float> gathered(static_cast<std::size_t>(rows * k));
  for (std::int64_t r = 0; r < rows; ++r)
    std::copy_n(xr.begin() + (order[r] / topk) * k, k, gathered.begin() + r * k);
  std::vector<float> y(static_cast<std::size_t>(rows * n), 0.0f), dx(gathered.size(), 0.0f);
  std::vector<std::vector<float>> dw(static_cast<std::size_t>(groups),
                                     std::vector<float>(static_cast<std::size_t>(n * k), 0.0f));
  for (std::int64_t g = 0; g < groups; ++g) {
    const std::int64_t first = offsets[g], m = counts[g];
    if (m == 0) continue;
    cpu::sgemm({false, true, m, n, k, k, k, n}, 1.0f, gathered.data() + first * k, wr[g].data(),
               0.0f, y.data() + first * n);
    cpu::sgemm({false, false, m, k, n, n, k, k}, 1.0f, dyr.data() + first * n, wr[g].data(), 0.0f,
               dx.data() + first * k);
    cpu::sgemm({true, false, n, k, m, n, k, k}, 1.0f, dyr.data() + first * n,
               gathered.data() + first * k, 0.0f, dw[g].data());
  }
  device_array<float> gx(x), gdy(dy), gy(y.size()), gdx(dx.size());
  device_array<std::int64_t> goffsets(offsets), gorder(order);
  std::vector<std::unique_ptr<device_array<float>>> gw, gdw;
  std::vector<const float*> wp;
  std::vector<float*> dwp;
  for (std::int64_t g = 0; g < groups; ++g) {
    gw.push_back(std::make_unique<device_array<float>>(w[g]));
    gdw.push_back(std::make_unique<device_array<float>>(static_cast<std::size_t>(n * k)));
    wp.push_back(gw.back()->data());
    dwp.push_back(gdw.back()->data());
  }
  device_array<const float*> gwp(wp);
  device_array<float*> gdwp(dwp);
  const gpu::grouped_rows gathered_rows{goffsets.data(), groups, rows, gorder.data(), topk};
  const gpu::grouped_rows direct{goffsets.data(), groups, rows, nullptr, 1};
  gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, gwp.data(), n, k, gy.data(), n, false, math,
                          nullptr);
  gpu::grouped_gemm_dgrad(direct, gdy.data(), n, gwp.data(), n, k, gdx.data(), k, false, math,
                          nullptr);
  gpu::grouped_gemm_wgrad(gathered_rows, gdy.data(), n, gx.data(), k, gdwp.data(), n, k, math,
                          nullptr);
  EXPECT_CLOSE(gy.get(), y, fp32_bound, "grouped fprop (gathered)");
  EXPECT_CLOSE(gdx.get(), dx, fp32_bound, "grouped dgrad");
  for (std::int64_t g = 1; g < groups; ++g)
    EXPECT_CLOSE(gdw[g]->get(), dw[g], fp32_bound, "grouped wgrad");
  if (bf16) {  // and the rounding mattered: against the unrounded operands it is BF16-far
    std::vector<float> exact(static_cast<std::size_t>(counts[5] * n));
    std::vector<float> source(static_cast<std::size_t>(counts[5] * k));
    for (std::int64_t r = 0; r < counts[5]; ++r)
      std::copy_n(x.begin() + (order[offsets[5] + r] / topk) * k, k, source.begin() + r * k);
    cpu::sgemm({false, true, counts[5], n, k, k, k, n}, 1.0f, source.data(), w[5].data(), 0.0f,
               exact.data());
    const auto got = gy.get();
    const std::vector<float> mine(got.begin() + offsets[5] * n, got.begin() + offsets[6] * n);
    const double error = relative_error(mine, exact);
    std::printf("[ grouped fprop bf16 vs exact operands ] relative error %.3g\n", error);
    EXPECT_GT(error, 1e-4);
    EXPECT_LT(error, 2e-2);
  }
  EXPECT_EQ(gdw[0]->get(), dw[0]);  // an expert without rows: no gradient
  {  // Overwriting gradients that hold anything: the products alone, zeros without rows.
    std::vector<std::unique_ptr<device_array<float>>> junk;
    std::vector<float*> junk_pointers;
    for (std::int64_t g = 0; g < groups; ++g) {
      junk.push_back(std::make_unique<device_array<float>>(
          std::vector<float>(static_cast<std::size_t>(n * k), -3.0f)));
      junk_pointers.push_back(junk.back()->data());
    }
    device_array<float*> gjunk(junk_pointers);
    gpu::grouped_gemm_wgrad(gathered_rows, gdy.data(), n, gx.data(), k, gjunk.data(), n, k, math,
                            nullptr, nullptr, false, nullptr, nullptr, true);
    EXPECT_EQ(junk[0]->get(), dw[0]) << "an expert without rows, overwritten";
    for (std::int64_t g = 1; g < groups; ++g)
      EXPECT_CLOSE(junk[static_cast<std::size_t>(g)]->get(), dw[g], fp32_bound,
                   "grouped wgrad overwriting");
  }
  if (bf16 && k % 8 == 0) {  // the gathered input rounded once, read as direct rows by both passes
    device_array<std::uint16_t> gathered16(static_cast<std::size_t>(rows * k));
    gpu::gather_rows_bf16(gathered_rows, gx.data(), k, k, gathered16.data(), nullptr);
    const auto got16 = gathered16.get();
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < k; ++c)
        ASSERT_EQ(got16[static_cast<std::size_t>(r * k + c)],
                  float_to_bf16(x[static_cast<std::size_t>(order[r] / topk * k + c)]))
            << r << " " << c;
    device_array<float> gy16(y.size());
    gpu::grouped_gemm_fprop(direct, nullptr, k, gwp.data(), n, k, gy16.data(), n, false, math,
                            nullptr, nullptr, gathered16.data());
    EXPECT_EQ(gy16.get(), gy.get());
    std::vector<std::unique_ptr<device_array<float>>> dw16;
    std::vector<float*> dw16_pointers;
    for (std::int64_t g = 0; g < groups; ++g) {
      dw16.push_back(std::make_unique<device_array<float>>(static_cast<std::size_t>(n * k)));
      dw16_pointers.push_back(dw16.back()->data());
    }
    device_array<float*> gdw16(dw16_pointers);
    gpu::grouped_gemm_wgrad(direct, gdy.data(), n, nullptr, k, gdw16.data(), n, k, math, nullptr,
                            nullptr, false, nullptr, gathered16.data(), true);
    for (std::int64_t g = 1; g < groups; ++g)
      EXPECT_CLOSE(dw16[static_cast<std::size_t>(g)]->get(), dw[g], fp32_bound,
                   "grouped wgrad on the gathered input rounded once");
  }

  // Two tables stacked into one [2n, k] per expert (gate above up): the same products as one GEMM
  // per table, the second table's outputs in columns [n, 2n) of y, its dy read from them.
  std::vector<std::unique_ptr<device_array<float>>> gw2, gdw2, gdwa;
  std::vector<const float*> wp2;
  std::vector<float*> dwp2, dwpa;
  for (std::int64_t g = 0; g < groups; ++g) {
    gw2.push_back(std::make_unique<device_array<float>>(random_values(n * k, 120 + g)));
    gdw2.push_back(std::make_unique<device_array<float>>(static_cast<std::size_t>(n * k)));
    gdwa.push_back(std::make_unique<device_array<float>>(static_cast<std::size_t>(n * k)));
    wp2.push_back(gw2.back()->data());
    dwp2.push_back(gdw2.back()->data());
    dwpa.push_back(gdwa.back()->data());
  }
  device_array<const float*> gwp2(wp2);
  device_array<float*> gdwp2(dwp2), gdwpa(dwpa);
  const auto dy2 = random_values(static_cast<std::size_t>(rows * 2 * n), 130);
  device_array<float> gdy2(dy2), gy2(static_cast<std::size_t>(rows * 2 * n));
  device_array<float> gdx2(dx.size()), gdxa(dx.size()), gya(y.size()), gyb(y.size());
  gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, {gwp.data(), gwp2.data()}, 2 * n, k,
                          gy2.data(), 2 * n, false, math, nullptr);
  gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, gwp2.data(), n, k, gyb.data(), n, false,
                          math, nullptr);
  gpu::grouped_gemm_dgrad(direct, gdy2.data(), 2 * n, {gwp.data(), gwp2.data()}, 2 * n, k,
                          gdx2.data(), k, false, math, nullptr);
  gpu::grouped_gemm_dgrad(direct, gdy2.data(), 2 * n, gwp.data(), n, k, gdxa.data(), k, false, math,
                          nullptr);
  gpu::grouped_gemm_dgrad(direct, gdy2.data() + n, 2 * n, gwp2.data(), n, k, gdxa.data(), k, true,
                          math, nullptr);
  gpu::grouped_gemm_wgrad(gathered_rows, gdy2.data(), 2 * n, gx.data(), k,
                          {gdwpa.data(), gdwp2.data()}, 2 * n, k, math, nullptr);
  const auto stacked = gy2.get(), first = gy.get(), second = gyb.get();
  std::vector<float> left, right;
  for (std::int64_t r = 0; r < rows; ++r) {
    left.insert(left.end(), stacked.begin() + r * 2 * n, stacked.begin() + r * 2 * n + n);
    right.insert(right.end(), stacked.begin() + r * 2 * n + n, stacked.begin() + (r + 1) * 2 * n);
  }
  EXPECT_CLOSE(left, first, fp32_bound, "stacked fprop, first table");
  EXPECT_CLOSE(right, second, fp32_bound, "stacked fprop, second table");
  EXPECT_CLOSE(gdx2.get(), gdxa.get(), fp32_bound, "stacked dgrad");
  // Wgrad of each half against the CPU on that half of dy.
  const auto dy2r = rounded_if(bf16, dy2);
  for (std::int64_t g = 1; g < groups; ++g) {
    const std::int64_t first_row = offsets[g], m = counts[g];
    std::vector<float> top(static_cast<std::size_t>(n * k), 0.0f), bottom(top.size(), 0.0f);
    if (m > 0) {
      cpu::sgemm({true, false, n, k, m, 2 * n, k, k}, 1.0f, dy2r.data() + first_row * 2 * n,
                 gathered.data() + first_row * k, 0.0f, top.data());
      cpu::sgemm({true, false, n, k, m, 2 * n, k, k}, 1.0f, dy2r.data() + first_row * 2 * n + n,
                 gathered.data() + first_row * k, 0.0f, bottom.data());
    }
    EXPECT_CLOSE(gdwa[g]->get(), top, fp32_bound, "stacked wgrad, first table");
    EXPECT_CLOSE(gdw2[g]->get(), bottom, fp32_bound, "stacked wgrad, second table");
  }
}

// Model-sized passes: reductions of many slabs, experts of more than one Wgrad chunk (1024 rows)
// and of none, gate and up stacked from two tables; against one CPU GEMM per expert on the same
// (rounded) operands.
TEST_P(GroupedGemms, ModelSizedPassesMatchTheCpu) {
  TROUPE_SKIP_WITHOUT_GPU();
  const gpu::gemm_math math = GetParam().math;
  SKIP_UNLESS_KERNELS_RUN(GetParam().kernels);
  const kernels_for_test chosen(GetParam().kernels);
  const bool bf16 = math == gpu::gemm_math::bf16;
  const std::vector<std::int64_t> counts{700, 0, 1500, 129, 1, 2100, 300, 64};
  std::vector<std::int64_t> offsets{0};
  for (auto c : counts) offsets.push_back(offsets.back() + c);
  const std::int64_t groups = static_cast<std::int64_t>(counts.size()), rows = offsets.back();
  const std::int64_t half = 136, n = 2 * half, k = 328, topk = 3;  // 6 slabs of 64 along k
  const std::int64_t tokens = (rows + topk - 1) / topk;
  std::vector<std::int64_t> order(static_cast<std::size_t>(rows));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  const auto x = random_values(static_cast<std::size_t>(tokens * k), 140);
  const auto dy = random_values(static_cast<std::size_t>(rows * n), 141);
  std::vector<std::vector<float>> w;  // per expert [n, k]: gate rows above up rows
  for (std::int64_t g = 0; g < groups; ++g) w.push_back(random_values(n * k, 150 + g));
  const auto xr = rounded_if(bf16, x), dyr = rounded_if(bf16, dy);
  std::vector<float> gathered(static_cast<std::size_t>(rows * k));
  for (std::int64_t r = 0; r < rows; ++r)
    std::copy_n(xr.begin() + (order[r] / topk) * k, k, gathered.begin() + r * k);
  std::vector<float> y(static_cast<std::size_t>(rows * n)), dx(gathered.size());
  std::vector<std::vector<float>> dw;
  for (std::int64_t g = 0; g < groups; ++g) {
    const auto wr = rounded_if(bf16, w[g]);
    dw.emplace_back(static_cast<std::size_t>(n * k), 0.0f);
    const std::int64_t first = offsets[g], m = counts[g];
    if (m == 0) continue;
    cpu::sgemm({false, true, m, n, k, k, k, n}, 1.0f, gathered.data() + first * k, wr.data(), 0.0f,
               y.data() + first * n);
    cpu::sgemm({false, false, m, k, n, n, k, k}, 1.0f, dyr.data() + first * n, wr.data(), 0.0f,
               dx.data() + first * k);
    cpu::sgemm({true, false, n, k, m, n, k, k}, 1.0f, dyr.data() + first * n,
               gathered.data() + first * k, 0.0f, dw[g].data());
  }
  // The device: each expert's weight as two tables of [half, k] (gate, up).
  std::vector<std::unique_ptr<device_array<float>>> tables;
  std::vector<const float*> gate, up;
  std::vector<float*> dgate, dup;
  for (std::int64_t g = 0; g < groups; ++g) {
    for (int t = 0; t < 2; ++t) {
      tables.push_back(std::make_unique<device_array<float>>(
          std::vector<float>(w[g].begin() + t * half * k, w[g].begin() + (t + 1) * half * k)));
      (t == 0 ? gate : up).push_back(tables.back()->data());
    }
    for (int t = 0; t < 2; ++t) {
      tables.push_back(std::make_unique<device_array<float>>(static_cast<std::size_t>(half * k)));
      (t == 0 ? dgate : dup).push_back(tables.back()->data());
    }
  }
  device_array<const float*> ggate(gate), gup(up);
  device_array<float*> gdgate(dgate), gdup(dup);
  device_array<float> gx(x), gdy(dy), gy(y.size()), gdx(dx.size());
  device_array<std::int64_t> goffsets(offsets), gorder(order);
  const gpu::grouped_rows gathered_rows{goffsets.data(), groups, rows, gorder.data(), topk};
  const gpu::grouped_rows direct{goffsets.data(), groups, rows, nullptr, 1};
  gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, {ggate.data(), gup.data()}, n, k, gy.data(),
                          n, false, math, nullptr);
  gpu::grouped_gemm_dgrad(direct, gdy.data(), n, {ggate.data(), gup.data()}, n, k, gdx.data(), k,
                          false, math, nullptr);
  gpu::grouped_gemm_wgrad(gathered_rows, gdy.data(), n, gx.data(), k, {gdgate.data(), gdup.data()},
                          n, k, math, nullptr);
  EXPECT_CLOSE(gy.get(), y, fp32_bound, "model-sized fprop");
  EXPECT_CLOSE(gdx.get(), dx, fp32_bound, "model-sized dgrad");
  {  // accumulating into what the outputs hold: twice the products
    device_array<float> gy2(gy.get()), gdx2(gdx.get());
    gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, {ggate.data(), gup.data()}, n, k,
                            gy2.data(), n, true, math, nullptr);
    gpu::grouped_gemm_dgrad(direct, gdy.data(), n, {ggate.data(), gup.data()}, n, k, gdx2.data(), k,
                            true, math, nullptr);
    std::vector<float> y2 = y, dx2 = dx;
    for (float& v : y2) v *= 2.0f;
    for (float& v : dx2) v *= 2.0f;
    EXPECT_CLOSE(gy2.get(), y2, fp32_bound, "model-sized fprop, accumulated");
    EXPECT_CLOSE(gdx2.get(), dx2, fp32_bound, "model-sized dgrad, accumulated");
  }
  if (bf16) {  // operands rounded by their producers: the same products as rounding f32 ones
    std::vector<std::uint16_t> dy16, gathered16;
    for (float v : dy) dy16.push_back(float_to_bf16(v));
    for (float v : gathered) gathered16.push_back(float_to_bf16(v));
    device_array<std::uint16_t> gdy16(dy16), gx16(gathered16);
    device_array<float> ggathered(gathered), gy3(y.size()), gy4(y.size()), gdx3(dx.size());
    gpu::grouped_gemm_fprop(direct, ggathered.data(), k, {ggate.data(), gup.data()}, n, k,
                            gy3.data(), n, false, math, nullptr);
    gpu::grouped_gemm_fprop(direct, nullptr, k, {ggate.data(), gup.data()}, n, k, gy4.data(), n,
                            false, math, nullptr, nullptr, gx16.data());
    gpu::grouped_gemm_dgrad(direct, nullptr, n, {ggate.data(), gup.data()}, n, k, gdx3.data(), k,
                            false, math, nullptr, nullptr, gdy16.data());
    EXPECT_EQ(gy4.get(), gy3.get());
    EXPECT_EQ(gdx3.get(), gdx.get());
    std::vector<std::unique_ptr<device_array<float>>> pre;
    std::vector<float*> pre_gate, pre_up;
    for (std::int64_t g = 0; g < 2 * groups; ++g) {
      pre.push_back(std::make_unique<device_array<float>>(
          std::vector<float>(static_cast<std::size_t>(half * k), 0.0f)));
      (g % 2 == 0 ? pre_gate : pre_up).push_back(pre.back()->data());
    }
    device_array<float*> gpre_gate(pre_gate), gpre_up(pre_up);
    gpu::grouped_gemm_wgrad(direct, nullptr, n, nullptr, k, {gpre_gate.data(), gpre_up.data()}, n,
                            k, math, nullptr, nullptr, true, gdy16.data(), gx16.data());
    for (std::int64_t g = 0; g < groups; ++g) {
      auto got = pre[static_cast<std::size_t>(2 * g)]->get();
      const auto second = pre[static_cast<std::size_t>(2 * g + 1)]->get();
      got.insert(got.end(), second.begin(), second.end());
      if (counts[g] == 0)
        EXPECT_EQ(got, dw[g]);
      else
        EXPECT_CLOSE(got, dw[g], fp32_bound, "model-sized wgrad, pre-rounded operands");
    }
    {  // Wgrad's sums of squares from CUTLASS's epilogue, of the gradients as it stores them whole
      // (experts without rows: zeros), against float64 sums over the gradients read back
      // (tolerance 1e-5 relative: the epilogue's per-thread sums are FP32)
      device_array<double> gsquares(
          std::vector<double>(static_cast<std::size_t>(2 * groups), -1.0));
      const bool summed = gpu::grouped_gemm_wgrad(
          direct, nullptr, n, nullptr, k, {gpre_gate.data(), gpre_up.data()}, n, k, math, nullptr,
          nullptr, false, gdy16.data(), gx16.data(), true, gsquares.data());
      EXPECT_EQ(summed, GetParam().kernels == gpu::grouped_gemm_kernels::cutlass);
      const auto squares = gsquares.get();
      for (std::size_t i = 0; i < squares.size(); ++i) {
        double expected = 0.0;
        for (float v : pre[i]->get()) expected += static_cast<double>(v) * static_cast<double>(v);
        if (summed)
          EXPECT_NEAR(squares[i], expected, 1e-5 * expected) << "gradient " << i;
        else
          EXPECT_EQ(squares[i], -1.0) << "gradient " << i;
      }
      // Adding to an earlier micro-batch's gradients: no sums, and the array is left alone.
      device_array<double> untouched(
          std::vector<double>(static_cast<std::size_t>(2 * groups), -1.0));
      EXPECT_FALSE(gpu::grouped_gemm_wgrad(
          direct, nullptr, n, nullptr, k, {gpre_gate.data(), gpre_up.data()}, n, k, math, nullptr,
          nullptr, false, gdy16.data(), gx16.data(), false, untouched.data()));
      EXPECT_EQ(untouched.get(), std::vector<double>(static_cast<std::size_t>(2 * groups), -1.0));
    }
    EXPECT_THROW(
        gpu::grouped_gemm_fprop(gathered_rows, nullptr, k, {ggate.data(), gup.data()}, n, k,
                                gy4.data(), n, false, math, nullptr, nullptr, gx16.data()),
        std::runtime_error);  // pre-rounded rows are never gathered
  }
  if (bf16) {
    // BF16 outputs (what CUTLASS's Fprop and Dgrad write; troupe's kernels round the same
    // accumulators they store in f32, bit for bit): within half a BF16 unit of the CPU's products
    // (8 significant bits: at most 2^-8 of the largest), plus the f32 bound.
    constexpr double bf16_output_bound = 1.0 / 256 + fp32_bound;
    device_array<std::uint16_t> gy16(y.size()), gdx16(dx.size());
    gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, {ggate.data(), gup.data()}, n, k, nullptr,
                            n, false, math, nullptr, nullptr, nullptr, gy16.data());
    gpu::grouped_gemm_dgrad(direct, gdy.data(), n, {ggate.data(), gup.data()}, n, k, nullptr, k,
                            false, math, nullptr, nullptr, nullptr, gdx16.data());
    const auto widened = [](const std::vector<std::uint16_t>& bits) {
      std::vector<float> values;
      for (std::uint16_t b : bits) values.push_back(bf16_to_float(b));
      return values;
    };
    EXPECT_CLOSE(widened(gy16.get()), y, bf16_output_bound, "model-sized fprop, BF16 outputs");
    EXPECT_CLOSE(widened(gdx16.get()), dx, bf16_output_bound, "model-sized dgrad, BF16 outputs");
    if (GetParam().kernels != gpu::grouped_gemm_kernels::cutlass) {
      const auto rounded = [](const std::vector<float>& values) {
        std::vector<std::uint16_t> bits;
        for (float v : values) bits.push_back(float_to_bf16(v));
        return bits;
      };
      EXPECT_EQ(gy16.get(), rounded(gy.get())) << "fprop's BF16 outputs: its f32 ones rounded";
      EXPECT_EQ(gdx16.get(), rounded(gdx.get())) << "dgrad's BF16 outputs: its f32 ones rounded";
    }
    EXPECT_THROW(
        gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, {ggate.data(), gup.data()}, n, k,
                                nullptr, n, true, math, nullptr, nullptr, nullptr, gy16.data()),
        std::runtime_error);  // BF16 outputs never accumulate
  }
  if (bf16) {  // the weights rounded once beforehand: the same products, bit for bit
    device_array<std::uint16_t> rounded((gpu::rounded_expert_weights_bytes(groups, n, k) + 1) / 2);
    gpu::round_expert_weights({ggate.data(), gup.data()}, groups, n, k, rounded.data(), nullptr);
    device_array<float> gy2(y.size()), gdx2(dx.size());
    gpu::grouped_gemm_fprop(gathered_rows, gx.data(), k, {ggate.data(), gup.data(), rounded.data()},
                            n, k, gy2.data(), n, false, math, nullptr);
    gpu::grouped_gemm_dgrad(direct, gdy.data(), n, {ggate.data(), gup.data(), rounded.data()}, n, k,
                            gdx2.data(), k, false, math, nullptr);
    EXPECT_EQ(gy2.get(), gy.get());
    EXPECT_EQ(gdx2.get(), gdx.get());
  }
  for (std::int64_t g = 0; g < groups; ++g) {
    auto got = tables[static_cast<std::size_t>(4 * g + 2)]->get();
    const auto second = tables[static_cast<std::size_t>(4 * g + 3)]->get();
    got.insert(got.end(), second.begin(), second.end());
    if (counts[g] == 0)
      EXPECT_EQ(got, dw[g]);  // an expert without rows: no gradient
    else
      EXPECT_CLOSE(got, dw[g], fp32_bound, "model-sized wgrad");
  }
  // Onto zeros (a layer's first backward after the runtime zeroed its gradients): the blocks that
  // are a tile's only writer store instead of adding; the same gradients, then a second call adds.
  std::vector<std::unique_ptr<device_array<float>>> fresh;
  std::vector<float*> fresh_gate, fresh_up;
  for (std::int64_t g = 0; g < 2 * groups; ++g) {
    fresh.push_back(std::make_unique<device_array<float>>(
        std::vector<float>(static_cast<std::size_t>(half * k), 0.0f)));
    (g % 2 == 0 ? fresh_gate : fresh_up).push_back(fresh.back()->data());
  }
  device_array<float*> gfresh_gate(fresh_gate), gfresh_up(fresh_up);
  for (const bool onto_zeros : {true, false})
    gpu::grouped_gemm_wgrad(gathered_rows, gdy.data(), n, gx.data(), k,
                            {gfresh_gate.data(), gfresh_up.data()}, n, k, math, nullptr, nullptr,
                            onto_zeros);
  for (std::int64_t g = 0; g < groups; ++g) {
    auto got = fresh[static_cast<std::size_t>(2 * g)]->get();
    const auto second = fresh[static_cast<std::size_t>(2 * g + 1)]->get();
    got.insert(got.end(), second.begin(), second.end());
    std::vector<float> twice = dw[g];
    for (float& v : twice) v *= 2.0f;
    if (counts[g] == 0)
      EXPECT_EQ(got, twice);
    else
      EXPECT_CLOSE(got, twice, fp32_bound, "model-sized wgrad onto zeros, then added");
  }
  // Overwriting (TROUPE_PARAM_GRAD_OVERWRITTEN: the runtime left the gradients as they were):
  // whatever they held is replaced, an expert without rows gets zeros; a second call adds. With
  // no rows at all every gradient becomes zeros.
  std::vector<std::unique_ptr<device_array<float>>> junk;
  std::vector<float*> junk_gate, junk_up;
  for (std::int64_t g = 0; g < 2 * groups; ++g) {
    junk.push_back(std::make_unique<device_array<float>>(
        std::vector<float>(static_cast<std::size_t>(half * k), 5.0f + static_cast<float>(g))));
    (g % 2 == 0 ? junk_gate : junk_up).push_back(junk.back()->data());
  }
  device_array<float*> gjunk_gate(junk_gate), gjunk_up(junk_up);
  for (const bool overwrite : {true, false})
    gpu::grouped_gemm_wgrad(gathered_rows, gdy.data(), n, gx.data(), k,
                            {gjunk_gate.data(), gjunk_up.data()}, n, k, math, nullptr, nullptr,
                            false, nullptr, nullptr, overwrite);
  for (std::int64_t g = 0; g < groups; ++g) {
    auto got = junk[static_cast<std::size_t>(2 * g)]->get();
    const auto second = junk[static_cast<std::size_t>(2 * g + 1)]->get();
    got.insert(got.end(), second.begin(), second.end());
    std::vector<float> twice = dw[g];
    for (float& v : twice) v *= 2.0f;
    if (counts[g] == 0)
      EXPECT_EQ(got, twice) << "expert " << g << " without rows, overwritten";
    else
      EXPECT_CLOSE(got, twice, fp32_bound, "model-sized wgrad overwriting, then added");
  }
  const std::vector<std::int64_t> no_offsets(static_cast<std::size_t>(groups + 1), 0);
  device_array<std::int64_t> gno_offsets(no_offsets);
  gpu::grouped_gemm_wgrad({gno_offsets.data(), groups, 0, gorder.data(), topk}, gdy.data(), n,
                          gx.data(), k, {gjunk_gate.data(), gjunk_up.data()}, n, k, math, nullptr,
                          nullptr, false, nullptr, nullptr, true);
  for (const auto& table : junk)
    EXPECT_EQ(table->get(), std::vector<float>(static_cast<std::size_t>(half * k), 0.0f))
        << "no rows at all, overwritten";
  // and the stores happen: expert 0 (700 rows, one block per tile in every kernel) replaces what
  // its gradient held (here not zeros, to see it).
  device_array<float> sevens(std::vector<float>(static_cast<std::size_t>(n * k), 7.0f));
  const std::vector<float*> first_only{sevens.data()};
  device_array<float*> gfirst_only(first_only);
  const std::vector<std::int64_t> one_offsets{0, counts[0]};
  device_array<std::int64_t> gone_offsets(one_offsets);
  gpu::grouped_gemm_wgrad({gone_offsets.data(), 1, counts[0], gorder.data(), topk}, gdy.data(), n,
                          gx.data(), k, gfirst_only.data(), n, k, math, nullptr, nullptr, true);
  EXPECT_CLOSE(sevens.get(), dw[0], fp32_bound, "wgrad onto zeros stores");
}

TEST(CudaOps, BadArgumentsAreErrorsBeforeAnyLaunch) {
  TROUPE_SKIP_WITHOUT_GPU();
  gpu::attention_problem wide{1, 1, 8, 576, 64, 512, 1.0f};
  EXPECT_THROW(gpu::attention_forward(wide, {}, {}, {}, {}, {}, nullptr, nullptr),
               std::runtime_error);
  gpu::router_shape too_many{1024, 8, 4, 8, true, 1.0f};
  EXPECT_THROW(
      gpu::router_forward(too_many, nullptr, nullptr, nullptr, nullptr, nullptr, 1, nullptr),
      std::runtime_error);
  try {
    gpu::router_shape uneven{60, 8, 4, 8, true, 1.0f};
    gpu::router_forward(uneven, nullptr, nullptr, nullptr, nullptr, nullptr, 1, nullptr);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("router_forward"), std::string::npos) << e.what();
  }
}

}  // namespace
