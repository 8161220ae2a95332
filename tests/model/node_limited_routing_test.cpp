// Node-limited routing (kernels/cpu/router.hpp with the hosts as groups): property tests over
// random logits, biases and placements of experts on hosts. A token's experts never span more
// than M hosts; the hosts kept are the M best by the sum of their top K/M choice values; the
// experts are the top K of the choice values on those hosts; with M covering every host the
// routing equals unrestricted top-K.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "kernels/cpu/router.hpp"

namespace {

namespace k = troupe::kernels::cpu;

struct routed {
  std::vector<float> scores, gates;
  std::vector<std::int32_t> selected;
};

routed route(const k::router_shape& shape, const std::vector<float>& logits,
             const std::vector<float>& bias, std::int64_t tokens) {
  routed r;
  r.scores.resize(logits.size());
  r.gates.resize(static_cast<std::size_t>(tokens * shape.topk));
  r.selected.resize(r.gates.size());
  k::router_forward(shape, logits.data(), bias.data(), r.scores.data(), r.selected.data(),
                    r.gates.data(), tokens);
  return r;
}

TEST(NodeLimitedRouting, AtMostMHostsTheBestHostsAndTheirBestExperts) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  int cases = 0;
  for (std::int64_t experts : {16, 64, 256})
    for (std::int64_t topk : {4, 6, 8})
      for (std::int64_t nodes : {2, 3, 4, 8}) {
        // A random placement: experts dealt to hosts unevenly, every host at least topk.
        std::vector<std::int32_t> node_of(static_cast<std::size_t>(experts));
        std::vector<std::int32_t> order(static_cast<std::size_t>(experts));
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        if (experts < nodes * topk) continue;
        for (std::int64_t i = 0; i < experts; ++i)
          node_of[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] =
              static_cast<std::int32_t>(i < nodes * topk ? i / topk : rng() % nodes);
        for (std::int64_t m = 1; m <= nodes; ++m) {
          ++cases;
          const std::int64_t tokens = 200;
          std::vector<float> logits(static_cast<std::size_t>(tokens * experts)),
              bias(static_cast<std::size_t>(experts));
          for (float& v : logits) v = normal(rng);
          for (float& v : bias) v = 0.05f * normal(rng);
          k::router_shape limited{experts, nodes, m, topk, true, 2.5f};
          limited.group_of = node_of.data();
          limited.group_top = std::max<std::int64_t>(1, topk / m);
          const routed r = route(limited, logits, bias, tokens);
          const routed free = route({experts, 1, 1, topk, true, 2.5f}, logits, bias, tokens);
          for (std::int64_t t = 0; t < tokens; ++t) {
            const std::int32_t* chosen = r.selected.data() + t * topk;
            std::set<std::int32_t> hosts;
            for (std::int64_t i = 0; i < topk; ++i) hosts.insert(node_of[chosen[i]]);
            ASSERT_LE(static_cast<std::int64_t>(hosts.size()), m)
                << experts << " experts, K " << topk << ", " << nodes << " hosts, M " << m;
            // The host scores, recomputed: the sum of each host's best K/M choice values.
            std::vector<std::vector<float>> on_host(static_cast<std::size_t>(nodes));
            std::vector<float> choice(static_cast<std::size_t>(experts));
            for (std::int64_t e = 0; e < experts; ++e) {
              choice[e] = r.scores[t * experts + e] + bias[e];
              on_host[node_of[e]].push_back(choice[e]);
            }
            std::vector<float> host_score(static_cast<std::size_t>(nodes));
            for (std::int64_t n = 0; n < nodes; ++n) {
              auto& v = on_host[n];
              std::sort(v.begin(), v.end(), std::greater<>());
              float sum = v[0];
              for (std::int64_t i = 1; i < limited.group_top; ++i) sum += v[i];
              host_score[n] = sum;
            }
            std::vector<float> sorted = host_score;
            std::sort(sorted.begin(), sorted.end(), std::greater<>());
            const float cut = sorted[static_cast<std::size_t>(m - 1)];
            for (std::int32_t h : hosts) EXPECT_GE(host_score[h], cut) << "host " << h;
            // The experts: the top K of the choice values on the kept hosts (those of the chosen
            // experts, plus any host tied at the cut, which may have lost the tie).
            float weakest_chosen = 1e30f;
            for (std::int64_t i = 0; i < topk; ++i)
              weakest_chosen = std::min(weakest_chosen, choice[chosen[i]]);
            for (std::int64_t e = 0; e < experts; ++e) {
              const bool passed_over = hosts.count(node_of[e]) > 0 &&
                                       std::find(chosen, chosen + topk, e) == chosen + topk;
              EXPECT_TRUE(!passed_over || choice[e] <= weakest_chosen)
                  << "expert " << e << " was passed over";
            }
            if (m == nodes) {  // every host: the unrestricted routing
              for (std::int64_t i = 0; i < topk; ++i) {
                EXPECT_EQ(chosen[i], free.selected[t * topk + i]);
                EXPECT_EQ(r.gates[t * topk + i], free.gates[t * topk + i]);
              }
            }
          }
        }
      }
  EXPECT_GT(cases, 40);
}

TEST(NodeLimitedRouting, DeepSeekV3GroupsAreTheSameRuleWithConsecutiveHosts) {
  // DeepSeek-V3: 256 experts on 8 nodes of 32, top-8 on at most 4 nodes scored by their top 2:
  // the config's group-limited routing (8 groups, keep 4) exactly.
  const std::int64_t experts = 256, tokens = 300;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> logits(static_cast<std::size_t>(tokens * experts)),
      bias(static_cast<std::size_t>(experts));
  for (float& v : logits) v = normal(rng);
  for (float& v : bias) v = 0.02f * normal(rng);
  std::vector<std::int32_t> node_of(static_cast<std::size_t>(experts));
  for (std::int64_t e = 0; e < experts; ++e) node_of[e] = static_cast<std::int32_t>(e / 32);
  k::router_shape limited{experts, 8, 4, 8, true, 2.5f};
  limited.group_of = node_of.data();
  limited.group_top = 2;
  const routed a = route(limited, logits, bias, tokens);
  const routed b = route({experts, 8, 4, 8, true, 2.5f}, logits, bias, tokens);
  EXPECT_EQ(a.selected, b.selected);
  EXPECT_EQ(a.gates, b.gates);
}

}  // namespace
