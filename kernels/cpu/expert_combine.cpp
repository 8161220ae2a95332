#include "kernels/cpu/expert_combine.hpp"

#include <cstring>

namespace troupe::kernels::cpu {

void group_by_expert(const std::int32_t* selected, std::int64_t tokens, std::int64_t topk,
                     std::int64_t experts, expert_grouping& out) {
  const std::int64_t pairs = tokens * topk;
  out.offsets.assign(static_cast<std::size_t>(experts + 1), 0);
  for (std::int64_t a = 0; a < pairs; ++a) ++out.offsets[static_cast<std::size_t>(selected[a] + 1)];
  for (std::int64_t e = 0; e < experts; ++e)
    out.offsets[static_cast<std::size_t>(e + 1)] += out.offsets[static_cast<std::size_t>(e)];
  out.order.assign(static_cast<std::size_t>(pairs), 0);
  out.position.assign(static_cast<std::size_t>(pairs), 0);
  std::vector<std::int64_t> fill(out.offsets.begin(), out.offsets.end() - 1);
  for (std::int64_t a = 0; a < pairs; ++a) {
    const std::int64_t row = fill[static_cast<std::size_t>(selected[a])]++;
    out.order[static_cast<std::size_t>(row)] = a;
    out.position[static_cast<std::size_t>(a)] = row;
  }
}

void gather_expert_rows(const float* x, const std::int64_t* order, std::int64_t topk,
                        std::int64_t width, float* out, std::int64_t begin, std::int64_t end) {
  for (std::int64_t r = begin; r < end; ++r)
    std::memcpy(out + r * width, x + (order[r] / topk) * width,
                static_cast<std::size_t>(width) * sizeof(float));
}

void combine_forward(const float* rows, const float* gates, const std::int64_t* position,
                     std::int64_t topk, std::int64_t width, float* y, std::int64_t begin,
                     std::int64_t end) {
  for (std::int64_t t = begin; t < end; ++t) {
    float* out = y + t * width;
    for (std::int64_t k = 0; k < topk; ++k) {
      const float gate = gates[t * topk + k];
      const float* row = rows + position[t * topk + k] * width;
      for (std::int64_t i = 0; i < width; ++i) out[i] += gate * row[i];
    }
  }
}

void combine_backward(const float* dy, const float* rows, const float* gates,
                      const std::int64_t* order, std::int64_t topk, std::int64_t width,
                      float* d_gates, float* d_rows, std::int64_t begin, std::int64_t end) {
  for (std::int64_t r = begin; r < end; ++r) {
    const std::int64_t a = order[r];
    const float* dy_row = dy + (a / topk) * width;
    const float* row = rows + r * width;
    float* d_row = d_rows + r * width;
    const float gate = gates[a];
    double dot = 0.0;
    for (std::int64_t i = 0; i < width; ++i) {
      dot += static_cast<double>(dy_row[i]) * static_cast<double>(row[i]);
      d_row[i] = gate * dy_row[i];
    }
    d_gates[a] = static_cast<float>(dot);
  }
}

void scatter_add_rows(const float* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t begin, std::int64_t end) {
  for (std::int64_t t = begin; t < end; ++t) {
    float* target = dx + t * width;
    for (std::int64_t k = 0; k < topk; ++k) {
      const float* row = d_rows + position[t * topk + k] * width;
      for (std::int64_t i = 0; i < width; ++i) target[i] += row[i];
    }
  }
}

}  // namespace troupe::kernels::cpu
