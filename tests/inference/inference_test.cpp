// The inference building blocks: the sampler (greedy, temperature, top-k, top-p, seeded and
// reproducible, draws that follow the distribution) and MLA's paged latent cache (sizing from a
// budget, growth without moving what is written, blocks shared and given back).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/inference/latent_cache.hpp"
#include "runtime/inference/sampler.hpp"

namespace {

using namespace troupe;

const std::vector<float> logits{1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};

TEST(Sampler, GreedyTakesTheHighestLogitAndTheLowestIdOfEqualOnes) {
  EXPECT_EQ(sample_token(logits, {}, 0), 1);
  std::vector<float> p(logits.size());
  sampling_distribution(logits, {}, p);
  EXPECT_EQ(p, (std::vector<float>{0, 1, 0, 0, 0, 0}));
}

TEST(Sampler, TheDistributionIsTheSoftmaxAtTheTemperatureCutByTopKAndTopP) {
  const float t = 0.7f;
  std::vector<double> exact(logits.size());
  double total = 0.0;
  for (std::size_t i = 0; i < logits.size(); ++i) total += exact[i] = std::exp(logits[i] / t);
  for (double& e : exact) e /= total;
  std::vector<float> p(logits.size());
  sampling_distribution(logits, {t, 0, 1.0f, 1}, p);
  for (std::size_t i = 0; i < p.size(); ++i) EXPECT_NEAR(p[i], exact[i], 1e-6) << i;
  // top-k 2: tokens 1 and 3 (equal logits), half each.
  sampling_distribution(logits, {t, 2, 1.0f, 1}, p);
  EXPECT_EQ(p, (std::vector<float>{0, 0.5f, 0, 0.5f, 0, 0}));
  // top-p: the smallest prefix reaching p; 1 and 3 hold 2 x 0.4295 of the mass at t = 0.7.
  sampling_distribution(logits, {t, 0, 0.7f, 1}, p);
  EXPECT_EQ(p, (std::vector<float>{0, 0.5f, 0, 0.5f, 0, 0}));
  sampling_distribution(logits, {t, 0, 0.9f, 1}, p);  // and token 2 (0.1029) reaches 0.9
  EXPECT_GT(p[2], 0.0f);
  EXPECT_EQ(p[0], 0.0f);
  EXPECT_NEAR(p[1] + p[2] + p[3], 1.0, 1e-6);
  sampling_distribution(logits, {t, 0, 1e-6f, 1}, p);  // at least one token
  EXPECT_EQ(p, (std::vector<float>{0, 1, 0, 0, 0, 0}));
}

TEST(Sampler, DrawsFollowTheDistributionAndRepeatWithTheSeed) {
  const sampling_params params{1.0f, 0, 1.0f, 42};
  std::vector<float> p(logits.size());
  sampling_distribution(logits, params, p);
  constexpr int draws = 200000;
  std::vector<int> counts(logits.size(), 0);
  for (std::uint64_t d = 0; d < draws; ++d) ++counts[sample_token(logits, params, d)];
  for (std::size_t i = 0; i < p.size(); ++i) {  // within 5 standard deviations
    const double pi = static_cast<double>(p[i]);
    const double sd = std::sqrt(draws * pi * (1.0 - pi));
    EXPECT_NEAR(counts[i], draws * pi, 5.0 * sd + 1.0) << i;
  }
  std::vector<std::int32_t> first, again, other;
  for (std::uint64_t d = 0; d < 64; ++d) {
    first.push_back(sample_token(logits, params, d));
    again.push_back(sample_token(logits, params, d));
    other.push_back(sample_token(logits, {1.0f, 0, 1.0f, 43}, d));
  }
  EXPECT_EQ(first, again);
  EXPECT_NE(first, other);
  EXPECT_NE(sampling_uniform(1, 0, 0), sampling_uniform(1, 0, 1));
}

TEST(Sampler, BadParametersAndLogitsAreErrors) {
  for (const sampling_params bad :
       {sampling_params{-1.0f}, sampling_params{NAN}, sampling_params{1.0f, -1},
        sampling_params{1.0f, 0, 0.0f}, sampling_params{1.0f, 0, 1.5f}})
    EXPECT_THROW(check_sampling(bad), error);
  std::vector<float> broken = logits;
  broken[4] = std::numeric_limits<float>::quiet_NaN();
  try {
    (void)sample_token(broken, {}, 0);
    ADD_FAILURE() << "no error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("token 4"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)sample_token(std::vector<float>{}, {}, 0), error);
}

TEST(Sampler, VerifiedDraftsFollowTheTargetDistribution) {
  // Draft from q, verify against p: the tokens follow p whatever q is (overlapping, disjoint in
  // places, equal). Tolerance: 0.01 in total variation over 200,000 draws (noise ~0.002).
  const std::vector<std::vector<float>> targets{{0.5f, 0.3f, 0.2f, 0.0f, 0.0f},
                                                {0.1f, 0.1f, 0.1f, 0.1f, 0.6f}};
  const std::vector<std::vector<float>> drafts{{0.2f, 0.2f, 0.2f, 0.2f, 0.2f},
                                               {0.0f, 0.0f, 0.5f, 0.5f, 0.0f},
                                               {0.5f, 0.3f, 0.2f, 0.0f, 0.0f}};
  const int draws = 200000;
  for (const auto& p : targets)
    for (const auto& q : drafts) {
      std::vector<double> seen(p.size(), 0.0);
      int kept_count = 0;
      for (int i = 0; i < draws; ++i) {
        const std::int32_t draft =
            draw_from(q, sampling_uniform(3, static_cast<std::uint64_t>(i), 1));
        const auto [token, kept] =
            verify_draft(p, q, draft, sampling_uniform(3, static_cast<std::uint64_t>(i), 2),
                         sampling_uniform(3, static_cast<std::uint64_t>(i), 0));
        seen[static_cast<std::size_t>(token)] += 1.0 / draws;
        kept_count += kept ? 1 : 0;
      }
      double distance = 0.0, overlap = 0.0;
      for (std::size_t t = 0; t < p.size(); ++t) {
        distance += 0.5 * std::abs(seen[t] - static_cast<double>(p[t]));
        overlap += static_cast<double>(std::min(p[t], q[t]));
      }
      EXPECT_LE(distance, 0.01);
      // A draft is kept with probability sum min(p, q).
      EXPECT_NEAR(kept_count / static_cast<double>(draws), overlap, 0.01);
    }
}

TEST(LatentCache, DeepSeekV3TakesSeventyKilobytesPerToken) {
  const latent_cache_shape v3{61, 512, 64, dtype::bf16, 64};
  EXPECT_EQ(v3.bytes_per_token(), 70272);
  EXPECT_EQ(v3.bytes_per_block(), 70272 * 64);
}

TEST(LatentCache, SequencesGrowWithoutMovingAndGiveTheirBlocksBack) {
  const latent_cache_shape shape{3, 8, 4, dtype::f32, 4};  // 48 bytes per token and layer
  latent_cache cache(shape, 10 * shape.bytes_per_block() + 100, device::cpu());
  EXPECT_EQ(cache.total_blocks(), 10);
  const auto a = cache.add_sequence(), b = cache.add_sequence();
  ASSERT_TRUE(cache.reserve(a, 5));  // two blocks
  ASSERT_TRUE(cache.reserve(b, 3));  // one
  EXPECT_EQ(cache.free_blocks(), 7);
  EXPECT_EQ(cache.capacity(a), 8);
  // Write each position's values, grow a, and find them where they were.
  std::map<std::pair<int, int>, void*> where;
  for (int layer = 0; layer < 3; ++layer)
    for (int pos = 0; pos < 5; ++pos) {
      void* s = cache.slot(a, layer, pos);
      std::vector<float> row(static_cast<std::size_t>(shape.width()), 100.0f * layer + pos);
      std::memcpy(s, row.data(), row.size() * sizeof(float));
      where[{layer, pos}] = s;
    }
  cache.advance(a, 5);
  ASSERT_TRUE(cache.reserve(a, 20));  // 25 positions: 7 blocks
  EXPECT_EQ(cache.free_blocks(), 2);
  for (const auto& [key, pointer] : where) {
    EXPECT_EQ(cache.slot(a, key.first, key.second), pointer);
    EXPECT_EQ(static_cast<float*>(pointer)[shape.width() - 1], 100.0f * key.first + key.second);
  }
  // Slots never overlap: every (sequence, layer, position) its own row.
  std::set<void*> rows;
  for (auto s : {a, b})
    for (int layer = 0; layer < 3; ++layer)
      for (std::int64_t pos = 0; pos < cache.capacity(s); ++pos)
        EXPECT_TRUE(rows.insert(cache.slot(s, layer, pos)).second);
  // Out of blocks: false, nothing taken.
  const auto c = cache.add_sequence();
  EXPECT_FALSE(cache.reserve(c, 3 * 4));
  EXPECT_EQ(cache.free_blocks(), 2);
  EXPECT_TRUE(cache.reserve(c, 2 * 4));
  cache.release(a);
  EXPECT_EQ(cache.free_blocks(), 7);
  EXPECT_EQ(cache.sequences(), 2);
  EXPECT_TRUE(cache.reserve(c, 7 * 4 + 2 * 4));
  EXPECT_EQ(cache.free_blocks(), 0);
}

TEST(LatentCache, MisuseIsAnError) {
  const latent_cache_shape shape{2, 8, 0, dtype::bf16, 16};
  EXPECT_THROW(latent_cache(shape, 100, device::cpu()), error);  // not one block
  EXPECT_THROW(latent_cache(latent_cache_shape{0, 8, 0}, 1 << 20, device::cpu()), error);
  latent_cache cache(shape, 4 * static_cast<std::uint64_t>(shape.bytes_per_block()), device::cpu());
  const auto s = cache.add_sequence();
  EXPECT_THROW(cache.advance(s, 1), error);                                  // nothing reserved
  EXPECT_FALSE(cache.reserve(s, std::numeric_limits<std::int64_t>::max()));  // no overflow
  EXPECT_EQ(cache.free_blocks(), 4);
  ASSERT_TRUE(cache.reserve(s, 10));
  EXPECT_THROW((void)cache.slot(s, 0, 16), error);
  EXPECT_THROW((void)cache.slot(s, 2, 0), error);
  EXPECT_THROW((void)cache.length(999), error);
  cache.release(s);
  EXPECT_THROW(cache.release(s), error);
}

}  // namespace
