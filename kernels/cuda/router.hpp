#pragma once

// DeepSeek-V3's group-limited sigmoid router and its sequence-wise balance loss on a CUDA
// device, the same contract as kernels/cpu/router.hpp (the bias steers selection only; gates
// normalised and scaled; selected experts listed in increasing order). Ties between equal
// choice values go to the lower expert id. Device pointers; `stream` is a cudaStream_t.

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda {

struct router_shape {
  std::int64_t experts = 0;  ///< at most max_router_experts
  std::int64_t groups = 1;
  std::int64_t topk_groups = 1;
  std::int64_t topk = 1;
  bool normalize = true;
  float scaling = 1.0f;
  const std::int32_t* group_of = nullptr;  ///< device; null: runs of consecutive experts
  std::int64_t group_top = 2;              ///< choice values a group's score sums, at most 16
};

inline constexpr std::int64_t max_router_experts = 512;

/// scores[tokens, experts] (sigmoid), selected[tokens, topk], gates[tokens, topk]; bias may be
/// null.
void router_forward(const router_shape& shape, const float* logits, const float* bias,
                    float* scores, std::int32_t* selected, float* gates, std::int64_t tokens,
                    void* stream);

/// d_logits += dL/dlogits through the gates.
void router_backward(const router_shape& shape, const float* scores, const std::int32_t* selected,
                     const float* d_gates, float* d_logits, std::int64_t tokens, void* stream);

std::size_t balance_loss_scratch_bytes(std::int64_t sequences, std::int64_t length,
                                       std::int64_t experts);

/// loss[0] = the sequence-wise balance loss averaged over `sequences` of `length` tokens
/// (summed in float64, stored as a float on the device: the layer's output tensor).
void balance_loss_forward(const router_shape& shape, const float* scores,
                          const std::int32_t* selected, std::int64_t sequences, std::int64_t length,
                          double alpha, float* loss, void* scratch, std::size_t scratch_bytes,
                          void* stream);

/// d_logits += d_loss * dL/dlogits.
void balance_loss_backward(const router_shape& shape, const float* scores,
                           const std::int32_t* selected, std::int64_t sequences,
                           std::int64_t length, double alpha, float d_loss, float* d_logits,
                           void* scratch, std::size_t scratch_bytes, void* stream);

/// counts[e] += the (token, slot) pairs routed to e: what the bias balancer reads, copied to
/// the host asynchronously.
void count_selections(const std::int32_t* selected, std::int64_t pairs, std::int64_t* counts,
                      void* stream);

}  // namespace troupe::kernels::cuda
