#include "kernels/cpu/router.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace troupe::kernels::cpu {

void router_forward(const router_shape& r, const float* logits, const float* bias, float* scores,
                    std::int32_t* selected, float* gates, std::int64_t tokens) {
  const std::int64_t per_group = r.experts / r.groups;
  std::vector<float> choice(static_cast<std::size_t>(r.experts));
  std::vector<float> group_score(static_cast<std::size_t>(r.groups));
  std::vector<std::int32_t> order(static_cast<std::size_t>(std::max(r.experts, r.groups)));
  std::vector<float> best(static_cast<std::size_t>(std::max<std::int64_t>(r.group_top, 1)));
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* l = logits + t * r.experts;
    float* s = scores + t * r.experts;
    for (std::int64_t e = 0; e < r.experts; ++e) {
      s[e] = 1.0f / (1.0f + std::exp(-l[e]));
      choice[static_cast<std::size_t>(e)] = s[e] + (bias != nullptr ? bias[e] : 0.0f);
    }
    // Group score: the sum of the group's `group_top` best choice values (best first).
    for (std::int64_t g = 0; g < r.groups; ++g) {
      std::fill(best.begin(), best.end(), -std::numeric_limits<float>::infinity());
      auto consider = [&](float c) {
        for (std::int64_t i = 0; i < r.group_top; ++i)
          if (c > best[static_cast<std::size_t>(i)]) {
            std::copy_backward(best.begin() + i, best.begin() + r.group_top - 1,
                               best.begin() + r.group_top);
            best[static_cast<std::size_t>(i)] = c;
            break;
          }
      };
      if (r.group_of == nullptr) {
        for (std::int64_t e = g * per_group; e < (g + 1) * per_group; ++e)
          consider(choice[static_cast<std::size_t>(e)]);
      } else {
        for (std::int64_t e = 0; e < r.experts; ++e)
          if (r.group_of[e] == g) consider(choice[static_cast<std::size_t>(e)]);
      }
      float sum = best[0];
      for (std::int64_t i = 1; i < r.group_top; ++i) sum += best[static_cast<std::size_t>(i)];
      group_score[static_cast<std::size_t>(g)] = sum;
    }
    std::iota(order.begin(), order.begin() + r.groups, 0);
    std::partial_sort(order.begin(), order.begin() + r.topk_groups, order.begin() + r.groups,
                      [&](std::int32_t a, std::int32_t b) {  // ties: the lower index, as CUDA
                        const float x = group_score[static_cast<std::size_t>(a)];
                        const float y = group_score[static_cast<std::size_t>(b)];
                        return x > y || (x == y && a < b);
                      });
    std::vector<bool> kept(static_cast<std::size_t>(r.groups), false);
    for (std::int64_t i = 0; i < r.topk_groups; ++i)
      kept[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = true;
    for (std::int64_t e = 0; e < r.experts; ++e)
      if (!kept[static_cast<std::size_t>(r.group_of != nullptr ? r.group_of[e] : e / per_group)])
        choice[static_cast<std::size_t>(e)] = -std::numeric_limits<float>::infinity();
    std::iota(order.begin(), order.begin() + r.experts, 0);
    std::partial_sort(order.begin(), order.begin() + r.topk, order.begin() + r.experts,
                      [&](std::int32_t a, std::int32_t b) {  // ties: the lower index, as CUDA
                        const float x = choice[static_cast<std::size_t>(a)];
                        const float y = choice[static_cast<std::size_t>(b)];
                        return x > y || (x == y && a < b);
                      });
    std::int32_t* chosen = selected + t * r.topk;
    std::copy(order.begin(), order.begin() + r.topk, chosen);
    std::sort(chosen, chosen + r.topk);
    float* g = gates + t * r.topk;
    float sum = 0.0f;
    for (std::int64_t k = 0; k < r.topk; ++k) sum += (g[k] = s[chosen[k]]);
    const float factor = r.normalize ? r.scaling / (sum + 1e-20f) : r.scaling;
    for (std::int64_t k = 0; k < r.topk; ++k) g[k] *= factor;
  }
}

void router_backward(const router_shape& r, const float* scores, const std::int32_t* selected,
                     const float* d_gates, float* d_logits, std::int64_t tokens) {
  for (std::int64_t t = 0; t < tokens; ++t) {
    const float* s = scores + t * r.experts;
    const std::int32_t* chosen = selected + t * r.topk;
    const float* dg = d_gates + t * r.topk;
    float* dl = d_logits + t * r.experts;
    // gates_k = scaling * s_k / Z with Z = sum s + 1e-20 (normalized); or scaling * s_k.
    float z = 1e-20f, dot = 0.0f;
    for (std::int64_t k = 0; k < r.topk; ++k) {
      z += s[chosen[k]];
      dot += dg[k] * s[chosen[k]];
    }
    for (std::int64_t k = 0; k < r.topk; ++k) {
      const float sk = s[chosen[k]];
      const float d_score =
          r.normalize ? r.scaling * (dg[k] / z - dot / (z * z)) : r.scaling * dg[k];
      dl[chosen[k]] += d_score * sk * (1.0f - sk);
    }
  }
}

namespace {

/// f_i of one sequence: E/(K*length) * tokens routed to expert i.
std::vector<double> load_fractions(const router_shape& r, const std::int32_t* selected,
                                   std::int64_t length) {
  std::vector<double> f(static_cast<std::size_t>(r.experts), 0.0);
  for (std::int64_t i = 0; i < length * r.topk; ++i)
    f[static_cast<std::size_t>(selected[i])] += 1.0;
  const double factor =
      static_cast<double>(r.experts) / (static_cast<double>(r.topk) * static_cast<double>(length));
  for (auto& value : f) value *= factor;
  return f;
}

}  // namespace

double balance_loss_forward(const router_shape& r, const float* scores,
                            const std::int32_t* selected, std::int64_t sequences,
                            std::int64_t length, double alpha) {
  double total = 0.0;
  for (std::int64_t b = 0; b < sequences; ++b) {
    const float* s = scores + b * length * r.experts;
    const auto f = load_fractions(r, selected + b * length * r.topk, length);
    std::vector<double> p(static_cast<std::size_t>(r.experts), 0.0);
    for (std::int64_t t = 0; t < length; ++t) {
      const float* row = s + t * r.experts;
      double z = 0.0;
      for (std::int64_t e = 0; e < r.experts; ++e) z += static_cast<double>(row[e]);
      for (std::int64_t e = 0; e < r.experts; ++e)
        p[static_cast<std::size_t>(e)] += static_cast<double>(row[e]) / z;
    }
    double loss = 0.0;
    for (std::int64_t e = 0; e < r.experts; ++e)
      loss += f[static_cast<std::size_t>(e)] * p[static_cast<std::size_t>(e)] /
              static_cast<double>(length);
    total += alpha * loss;
  }
  return sequences > 0 ? total / static_cast<double>(sequences) : 0.0;
}

void balance_loss_backward(const router_shape& r, const float* scores, const std::int32_t* selected,
                           std::int64_t sequences, std::int64_t length, double alpha, float d_loss,
                           float* d_logits) {
  if (sequences == 0) return;
  for (std::int64_t b = 0; b < sequences; ++b) {
    const auto f = load_fractions(r, selected + b * length * r.topk, length);
    // dL/ds'_{t,i} = c * f_i with c = d_loss * alpha / (length * sequences).
    const double c = static_cast<double>(d_loss) * alpha /
                     (static_cast<double>(length) * static_cast<double>(sequences));
    for (std::int64_t t = 0; t < length; ++t) {
      const std::int64_t row_index = b * length + t;
      const float* s = scores + row_index * r.experts;
      float* dl = d_logits + row_index * r.experts;
      double z = 0.0, weighted = 0.0;
      for (std::int64_t e = 0; e < r.experts; ++e) {
        z += static_cast<double>(s[e]);
        weighted += f[static_cast<std::size_t>(e)] * static_cast<double>(s[e]);
      }
      // s' = s / z: ds_j = c * (f_j - sum_i f_i s_i / z) / z; then through the sigmoid.
      for (std::int64_t e = 0; e < r.experts; ++e) {
        const double ds = c * (f[static_cast<std::size_t>(e)] - weighted / z) / z;
        dl[e] += static_cast<float>(ds) * s[e] * (1.0f - s[e]);
      }
    }
  }
}

void count_selections(const std::int32_t* selected, std::int64_t pairs, std::int64_t* counts) {
  for (std::int64_t i = 0; i < pairs; ++i) ++counts[selected[i]];
}

}  // namespace troupe::kernels::cpu
