#pragma once

// Dispatch and combine of routed experts. Experts compute rows grouped by expert: the (token,
// slot) assignments of a micro-batch sorted by expert, tokens ascending within an expert. The
// same grouping serves one stage computing all experts and expert shards each computing theirs,
// and combine sums each token's slots in slot order, so both give the same bits.
//   combine:  y[t] = shared[t] + sum_k gate[t,k] * rows[position[t*K+k]]
//   backward: d_gate[t,k] = dy[t] . rows[...],  d_rows[...] = gate[t,k] * dy[t],
//             dx[t] += sum_k d_input_rows[position[t*K+k]]

#include <cstdint>
#include <vector>

namespace troupe::kernels::cpu {

struct expert_grouping {
  std::vector<std::int64_t> order;     ///< [T*K] assignment (t*K + slot) of each row
  std::vector<std::int64_t> offsets;   ///< [E+1] first row of each expert
  std::vector<std::int64_t> position;  ///< [T*K] row of each assignment
};

/// Groups the assignments of selected[tokens, topk] (expert ids < experts) by expert.
void group_by_expert(const std::int32_t* selected, std::int64_t tokens, std::int64_t topk,
                     std::int64_t experts, expert_grouping& out);

/// out[r] = x[order[r] / topk] for rows [begin, end): the token rows an expert computes.
void gather_expert_rows(const float* x, const std::int64_t* order, std::int64_t topk,
                        std::int64_t width, float* out, std::int64_t begin, std::int64_t end);

/// y[t] += sum over slots, in slot order, of gates[t*K+k] * rows[position[t*K+k]], for tokens
/// [begin, end). y holds the shared experts' output (or zeros) on entry.
void combine_forward(const float* rows, const float* gates, const std::int64_t* position,
                     std::int64_t topk, std::int64_t width, float* y, std::int64_t begin,
                     std::int64_t end);

/// For rows [begin, end): d_gates[a] = dy[t] . rows[r] (accumulated in double) and
/// d_rows[r] = gates[a] * dy[t], with a = order[r], t = a / topk.
void combine_backward(const float* dy, const float* rows, const float* gates,
                      const std::int64_t* order, std::int64_t topk, std::int64_t width,
                      float* d_gates, float* d_rows, std::int64_t begin, std::int64_t end);

/// dx[t] += sum over slots, in slot order, of d_rows[position[t*K+k]], for tokens [begin, end).
void scatter_add_rows(const float* d_rows, const std::int64_t* position, std::int64_t topk,
                      std::int64_t width, float* dx, std::int64_t begin, std::int64_t end);

}  // namespace troupe::kernels::cpu
