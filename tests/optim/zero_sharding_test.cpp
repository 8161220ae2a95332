// ZeRO-1's bookkeeping (runtime/optim/zero_sharding.hpp) without actors: the slices cover each
// parameter once; a reduce-scatter and an all-gather among simulated ranks (one holding a
// parameter twice) give every holder the plain sum and the same values; AdamW restricted to
// ranges and gathered equals AdamW on the whole parameter bit for bit; moments saved as pieces
// by one split load into another.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "runtime/core/error.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "runtime/optim/adamw.hpp"
#include "runtime/optim/zero_sharding.hpp"

namespace {

using namespace troupe;

TEST(ZeroSlice, CoversEveryElementOnceAndEvenly) {
  for (std::int64_t numel : {0, 1, 2, 5, 7, 128, 1001})
    for (std::int32_t holders = 1; holders <= 9; ++holders) {
      std::int64_t next = 0, smallest = numel, largest = 0;
      for (std::int32_t k = 0; k < holders; ++k) {
        const element_range r = zero_slice(numel, k, holders);
        EXPECT_EQ(r.begin, next) << numel << " " << holders << " " << k;
        next = r.end;
        smallest = std::min(smallest, r.size());
        largest = std::max(largest, r.size());
      }
      EXPECT_EQ(next, numel);
      EXPECT_LE(largest - smallest, 1);
    }
  EXPECT_THROW(zero_slice(10, 2, 2), troupe::error);
}

/// Three simulated ranks; rank 1 holds parameter "a" in two chunks (DualPipe's first and last
/// stage), rank 2 does not hold "b".
struct simulated_job {
  static constexpr int ranks = 3;
  zero_layout layout;
  std::vector<std::vector<parameter_store>> stores;

  simulated_job() {
    layout.parameters["a"] = {13, {{0, 0}, {1, 0}, {1, 1}, {2, 0}}};
    layout.parameters["b"] = {7, {{0, 0}, {1, 1}}};
    stores.resize(ranks);
    stores[0].resize(1);
    stores[1].resize(2);
    stores[2].resize(1);
    for (const auto& [name, entry] : layout.parameters)
      for (const zero_slot& slot : entry.slots)
        stores[static_cast<std::size_t>(slot.rank)][static_cast<std::size_t>(slot.chunk)].add(
            name, {"", {entry.numel}, dtype::f32, TROUPE_INIT_ZEROS, 0.0f, TROUPE_PARAM_TRAINABLE});
  }
  chunk_tensor of(int rank, bool gradient) {
    return [this, rank, gradient](std::int32_t chunk, const std::string& name) {
      parameter& p =
          stores[static_cast<std::size_t>(rank)][static_cast<std::size_t>(chunk)].at(name);
      return gradient ? p.grad : p.value;
    };
  }
  /// Bucket by bucket: every rank's pieces to every other, then `in` on each rank with what it
  /// got. Buckets of 5 elements: parameters and slices are cut across buckets.
  template <class Out, class In>
  void exchange(Out out, In in) {
    std::vector<zero_sharding> sharding;
    for (int r = 0; r < ranks; ++r) sharding.emplace_back(layout, r, 5);
    ASSERT_EQ(sharding[0].buckets(), 4u) << "20 elements in buckets of 5";
    for (std::size_t b = 0; b < sharding[0].buckets(); ++b) {
      std::vector<std::map<std::int32_t, zero_pieces>> received(ranks);
      for (int r = 0; r < ranks; ++r)
        for (std::int32_t peer : sharding[static_cast<std::size_t>(r)].peers())
          received[static_cast<std::size_t>(peer)][r] =
              out(sharding[static_cast<std::size_t>(r)], r, peer, b);
      for (int r = 0; r < ranks; ++r)
        in(sharding[static_cast<std::size_t>(r)], r, received[static_cast<std::size_t>(r)], b);
    }
  }
};

float gradient_value(std::int32_t rank, std::int32_t chunk, const std::string& name,
                     std::int64_t i) {
  return std::sin(
      static_cast<float>(1 + rank * 31 + chunk * 17 + static_cast<int>(name[0]) * 5 + i));
}

TEST(ZeroSharding, ReduceScatterSumsInSlotOrderAndAllGatherSpreadsTheValues) {
  simulated_job job;
  for (const auto& [name, entry] : job.layout.parameters)
    for (const zero_slot& slot : entry.slots) {
      tensor g = job.of(slot.rank, true)(slot.chunk, name);
      for (std::int64_t i = 0; i < entry.numel; ++i)
        g.data_as<float>()[i] = gradient_value(slot.rank, slot.chunk, name, i);
    }
  std::vector<gradient_summary> summaries(simulated_job::ranks);
  using received = std::map<std::int32_t, zero_pieces>;
  job.exchange([&](const zero_sharding& z, int r, std::int32_t peer,
                   std::size_t b) { return z.gradient_pieces(peer, job.of(r, true), b); },
               [&](const zero_sharding& z, int r, const received& got, std::size_t b) {
                 z.reduce(got, job.of(r, true), b, summaries[static_cast<std::size_t>(r)]);
               });
  // Each keeper's range holds the sum in slot order (a left fold in f32), the norm counts each
  // element once.
  double norm = 0.0;
  for (const auto& [name, entry] : job.layout.parameters) {
    const auto holders = static_cast<std::int32_t>(entry.slots.size());
    for (std::int32_t k = 0; k < holders; ++k) {
      const element_range r = zero_slice(entry.numel, k, holders);
      const zero_slot keeper = entry.slots[static_cast<std::size_t>(k)];
      const float* got = job.of(keeper.rank, true)(keeper.chunk, name).data_as<const float>();
      for (std::int64_t i = r.begin; i < r.end; ++i) {
        float sum = 0.0f;
        for (std::size_t j = 0; j < entry.slots.size(); ++j) {
          const float g = gradient_value(entry.slots[j].rank, entry.slots[j].chunk, name, i);
          sum = j == 0 ? g : sum + g;
        }
        EXPECT_EQ(got[i], sum) << name << "[" << i << "]";
        norm += static_cast<double>(sum) * static_cast<double>(sum);
      }
    }
  }
  double reported = 0.0;
  for (const auto& s : summaries) reported += s.norm_squared;
  EXPECT_NEAR(reported, norm, 1e-12 * norm);

  // Each keeper writes its range of the values; after the all-gather every slot has them all.
  for (const auto& [name, entry] : job.layout.parameters) {
    const auto holders = static_cast<std::int32_t>(entry.slots.size());
    for (std::int32_t k = 0; k < holders; ++k) {
      const element_range r = zero_slice(entry.numel, k, holders);
      const zero_slot keeper = entry.slots[static_cast<std::size_t>(k)];
      float* v = job.of(keeper.rank, false)(keeper.chunk, name).data_as<float>();
      for (std::int64_t i = r.begin; i < r.end; ++i) v[i] = static_cast<float>(100 * k + i);
    }
  }
  job.exchange([&](const zero_sharding& z, int r, std::int32_t peer,
                   std::size_t b) { return z.value_pieces(peer, job.of(r, false), b); },
               [&](const zero_sharding& z, int r, const received& got, std::size_t b) {
                 z.gather(got, job.of(r, false), b);
               });
  for (const auto& [name, entry] : job.layout.parameters)
    for (const zero_slot& slot : entry.slots) {
      const float* v = job.of(slot.rank, false)(slot.chunk, name).data_as<const float>();
      for (std::int32_t k = 0; k < static_cast<std::int32_t>(entry.slots.size()); ++k) {
        const element_range r =
            zero_slice(entry.numel, k, static_cast<std::int32_t>(entry.slots.size()));
        for (std::int64_t i = r.begin; i < r.end; ++i)
          EXPECT_EQ(v[i], static_cast<float>(100 * k + i)) << name << " at rank " << slot.rank;
      }
    }
  // A missing piece is named.
  zero_sharding z0(job.layout, 0);
  gradient_summary s;
  EXPECT_THROW(z0.reduce({}, job.of(0, true), 0, s), troupe::error);
}

parameter_spec matrix(std::int64_t rows, std::int64_t cols) {
  return {"", {rows, cols}, dtype::f32, TROUPE_INIT_NORMAL, 0.02f, TROUPE_PARAM_TRAINABLE};
}

TEST(ZeroSharding, RangedAdamWGatheredEqualsWholeAdamWAndMomentsLoadAcrossSplits) {
  thread_pool pool(2);
  const std::int64_t rows = 9, cols = 37;
  auto fill = [&](parameter_store& s, int step) {
    float* g = s.at("w").grad.data_as<float>();
    for (std::int64_t i = 0; i < rows * cols; ++i)
      g[i] = std::cos(static_cast<float>(i * step) * 0.37f);
  };
  parameter_store whole;
  whole.add("w", matrix(rows, cols));
  whole.initialize(3);
  adamw reference({0.9, 0.95, 1e-8, 0.1});
  reference.attach(whole);
  // Three holders, each updating its range; values gathered by hand after each step.
  const int holders = 3;
  std::vector<parameter_store> part(holders);
  std::vector<adamw> opt;
  for (int k = 0; k < holders; ++k) {
    part[static_cast<std::size_t>(k)].add("w", matrix(rows, cols));
    part[static_cast<std::size_t>(k)].initialize(3);
    opt.emplace_back(adamw_settings{0.9, 0.95, 1e-8, 0.1});
  }
  for (int k = 0; k < holders; ++k) {
    opt[static_cast<std::size_t>(k)].attach(part[static_cast<std::size_t>(k)]);
    opt[static_cast<std::size_t>(k)].keep_ranges({{"w", zero_slice(rows * cols, k, holders)}});
  }
  EXPECT_EQ(opt[0].state_bytes(), 2 * 2 * zero_slice(rows * cols, 0, holders).size());
  for (int step = 1; step <= 4; ++step) {
    fill(whole, step);
    reference.step(1e-2, 0.5, step, pool);
    for (int k = 0; k < holders; ++k) {
      fill(part[static_cast<std::size_t>(k)], step);
      opt[static_cast<std::size_t>(k)].step(1e-2, 0.5, step, pool);
    }
    for (int k = 0; k < holders; ++k) {
      const element_range r = zero_slice(rows * cols, k, holders);
      for (int other = 0; other < holders; ++other)
        std::memcpy(part[static_cast<std::size_t>(other)].at("w").value.data_as<float>() + r.begin,
                    part[static_cast<std::size_t>(k)].at("w").value.data_as<float>() + r.begin,
                    static_cast<std::size_t>(r.size()) * sizeof(float));
    }
  }
  for (int k = 0; k < holders; ++k)
    EXPECT_EQ(0, std::memcmp(whole.at("w").value.data(),
                             part[static_cast<std::size_t>(k)].at("w").value.data(),
                             whole.at("w").value.nbytes()));
  // The three holders' pieces load into two holders and into a whole optimizer: same moments.
  std::vector<std::pair<std::string, tensor>> pieces;
  for (auto& o : opt)
    for (auto& entry : o.state()) pieces.push_back(entry);
  EXPECT_NE(pieces.front().first.find("w.exp_avg["), std::string::npos) << pieces.front().first;
  adamw unsharded({0.9, 0.95, 1e-8, 0.1});
  unsharded.attach(whole);
  unsharded.load_state(pieces);
  const auto expected = reference.state(), got = unsharded.state();
  ASSERT_EQ(expected.size(), got.size());
  for (std::size_t i = 0; i < expected.size(); ++i)
    EXPECT_EQ(0, std::memcmp(expected[i].second.data(), got[i].second.data(),
                             expected[i].second.nbytes()))
        << expected[i].first;
  adamw half({0.9, 0.95, 1e-8, 0.1});
  half.attach(part[0]);
  const element_range second_half = zero_slice(rows * cols, 1, 2);
  half.keep_ranges({{"w", second_half}});
  half.load_state(reference.state());  // a whole tensor into a range
  const auto halves = half.state();
  EXPECT_EQ(halves[0].first, fmt::format("w.exp_avg[{}:{}]", second_half.begin, second_half.end));
  EXPECT_EQ(0, std::memcmp(
                   halves[0].second.data(),
                   static_cast<const std::uint16_t*>(expected[0].second.data()) + second_half.begin,
                   halves[0].second.nbytes()));
  // Pieces that leave a gap are refused, naming the moment.
  pieces.erase(pieces.begin());
  try {
    unsharded.load_state(pieces);
    ADD_FAILURE() << "a gap in the pieces was accepted";
  } catch (const troupe::error& e) {
    EXPECT_NE(std::string(e.what()).find("w.exp_avg"), std::string::npos) << e.what();
  }
}

}  // namespace
