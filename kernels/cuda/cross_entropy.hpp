#pragma once

// Softmax cross-entropy over the vocabulary on a CUDA device, the same contract as
// kernels/cpu/cross_entropy.hpp (a negative target marks a row without a label). Rows have a
// leading dimension, so the output head can run it over a chunk of rows at a time and turn each
// chunk's logits into their gradient in place: the fused head never holds [tokens, vocab]
// logits at once. Device pointers; `stream` is a cudaStream_t.

#include <cstdint>

namespace troupe::kernels::cuda {

/// losses[r] = logsumexp(row) - row[target] (0 for ignored rows) and lse[r] = logsumexp(row).
void cross_entropy_forward(const float* logits, std::int64_t ld, const std::int32_t* targets,
                           std::int64_t rows, std::int64_t vocab, float* losses, float* lse,
                           void* stream);

/// dlogits[r] = scale * (softmax(row) - onehot(target)) from lse of the forward; 0 for ignored
/// rows. dlogits may be logits (in place); it has the same leading dimension.
void cross_entropy_backward(const float* logits, std::int64_t ld, const std::int32_t* targets,
                            const float* lse, std::int64_t rows, std::int64_t vocab, float scale,
                            float* dlogits, void* stream);

/// The same gradient rounded to BF16 (bits), row r at dlogits + r * ld_out: what the output
/// head keeps from forward to backward under BF16 math (runtime/layers/output_head.hpp).
void cross_entropy_backward_bf16(const float* logits, std::int64_t ld, const std::int32_t* targets,
                                 const float* lse, std::int64_t rows, std::int64_t vocab,
                                 float scale, std::uint16_t* dlogits, std::int64_t ld_out,
                                 void* stream);

/// total[0] = the sum of losses[0, rows) (float64, in a fixed order) and labelled[0] = the
/// number of rows with a target: what the host reads back once per step.
void sum_losses(const float* losses, const std::int32_t* targets, std::int64_t rows, double* total,
                std::int64_t* labelled, void* stream);

}  // namespace troupe::kernels::cuda
