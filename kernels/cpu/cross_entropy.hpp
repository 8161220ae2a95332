#pragma once

// Softmax cross-entropy over the vocabulary, per row of logits. A negative target marks a
// position without a label (ignored).

#include <cstdint>

namespace troupe::kernels::cpu {

/// Sum over labelled rows of logsumexp(row) - row[target]; `labelled` gets their number.
/// `losses` (optional) gets each row's loss (0 for ignored rows).
double cross_entropy_forward(const float* logits, const std::int32_t* targets, std::int64_t rows,
                             std::int64_t vocab, float* losses, std::int64_t* labelled);

/// dlogits (overwritten) = scale * (softmax(row) - onehot(target)); 0 for ignored rows.
void cross_entropy_backward(const float* logits, const std::int32_t* targets, std::int64_t rows,
                            std::int64_t vocab, float scale, float* dlogits);

}  // namespace troupe::kernels::cpu
