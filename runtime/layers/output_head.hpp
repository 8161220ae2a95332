#pragma once

// The output head and its cross-entropy: logits = x W^T over the vocabulary, then softmax
// cross-entropy against the targets (negative targets are unlabelled). Training computes the
// loss and its gradient a chunk of rows at a time, so the [tokens, vocab] FP32 logits never
// exist at once: the backward takes the gradient the forward kept (output_head_loss_keeping_
// gradient: in FP32 on the host up to 64 MiB, in BF16 on a GPU whose head multiplies in BF16),
// or else recomputes each chunk's logits. The
// head multiplies in FP32 on the CPU and under "fp32", in BF16 under "bf16" and "fp8" (never in
// FP8: DeepSeek-V3 keeps the embedding, the output head, the MoE gate, the norms and attention in
// higher precision and uses FP8 for the other linear layers).

#include <cstdint>
#include <vector>

#include "runtime/exec/exec_context.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

struct head_loss {
  double sum = 0.0;           ///< sum of the labelled rows' losses
  std::int64_t labelled = 0;  ///< their number
  double mean() const { return labelled > 0 ? sum / static_cast<double>(labelled) : 0.0; }
};

/// Rows whose logits exist at once in output_head_loss and output_head_backward: at most 256 MiB
/// of FP32 logits.
std::int64_t head_chunk_rows(std::int64_t vocab);

/// logits [rows, vocab] (overwritten) and the loss when `targets` is not null: for callers that
/// want the logits (troupe logits, evaluation).
head_loss output_head_forward(const exec_context& context, const float* x, const float* weight,
                              float* logits, const std::int32_t* targets, std::int64_t rows,
                              std::int64_t width, std::int64_t vocab);

/// The loss alone, `chunk_rows` rows at a time (0: head_chunk_rows): the [rows, vocab] logits
/// never exist at once.
head_loss output_head_loss(const exec_context& context, const float* x, const float* weight,
                           const std::int32_t* targets, std::int64_t rows, std::int64_t width,
                           std::int64_t vocab, std::int64_t chunk_rows = 0);

/// Whether output_head_loss_keeping_gradient serves this context and size: on the host while
/// the FP32 gradient of [rows, vocab] takes at most 64 MiB (its logits, turned in place), on a GPU
/// whose head multiplies in BF16 (the "bf16" and "fp8" precisions) while the BF16 gradient of
/// [rows, vocab] takes at most 1 GiB.
bool head_keeps_gradient(const exec_context& context, std::int64_t rows, std::int64_t vocab);

/// output_head_loss that also keeps dL/dlogits per unit of scale (softmax - onehot, 0 for
/// unlabelled rows) [rows, vocab] into `d_logits` (FP32 on the host, BF16 on a GPU), for
/// output_head_backward_kept. Only where head_keeps_gradient says so.
head_loss output_head_loss_keeping_gradient(const exec_context& context, const float* x,
                                            const float* weight, const std::int32_t* targets,
                                            std::int64_t rows, std::int64_t width,
                                            std::int64_t vocab, tensor& d_logits);

/// Backward from the kept gradient: dx += scale * d_logits W, dweight += scale * d_logits^T x,
/// two GEMMs over all rows (no logits recomputed).
void output_head_backward_kept(const exec_context& context, const float* x, const float* weight,
                               const tensor& d_logits, float scale, float* dx, float* dweight,
                               std::int64_t rows, std::int64_t width, std::int64_t vocab);

/// Backward of scale * sum of the labelled losses: dx += ..., dweight += ..., recomputing each
/// chunk's logits (nothing is kept from the forward).
void output_head_backward(const exec_context& context, const float* x, const float* weight,
                          const std::int32_t* targets, float scale, float* dx, float* dweight,
                          std::int64_t rows, std::int64_t width, std::int64_t vocab,
                          std::int64_t chunk_rows = 0);

}  // namespace troupe
