#pragma once

// The output head and its cross-entropy: logits = x W^T over the vocabulary, then softmax
// cross-entropy against the targets (negative targets are unlabelled). The head runs in FP32
// whatever the topology's precision: DeepSeek-V3 keeps the embedding, the output head, the MoE
// gate, the norms and attention in high precision and uses FP8 for the other linear layers.

#include <cstdint>
#include <vector>

#include "runtime/exec/exec_context.hpp"

namespace troupe {

struct head_loss {
  double sum = 0.0;           ///< sum of the labelled rows' losses
  std::int64_t labelled = 0;  ///< their number
  double mean() const { return labelled > 0 ? sum / static_cast<double>(labelled) : 0.0; }
};

/// logits [rows, vocab] (overwritten) and the loss when `targets` is not null.
head_loss output_head_forward(const exec_context& context, const float* x, const float* weight,
                              float* logits, const std::int32_t* targets, std::int64_t rows,
                              std::int64_t width, std::int64_t vocab);

/// Backward of scale * sum of the labelled losses: dx += ..., dweight += ....
void output_head_backward(const exec_context& context, const float* x, const float* weight,
                          const float* logits, const std::int32_t* targets, float scale, float* dx,
                          float* dweight, std::int64_t rows, std::int64_t width,
                          std::int64_t vocab);

}  // namespace troupe
