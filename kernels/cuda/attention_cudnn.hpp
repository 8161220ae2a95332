#pragma once

// Causal attention by cuDNN's fused flash attention (its SDPA graphs, through the cuDNN
// frontend), for model.precision = "bf16" on a GPU: the same contract as attention_forward_bf16
// and attention_backward_bf16 (attention.hpp), with the operands packed to BF16 by
// attention_packing.hpp (the shared rope key behind each head's nope columns), the output and
// the gradients produced in BF16 and widened to FP32, lse the same natural-log log-sum-exp, so
// either path's forward feeds either path's backward. cuDNN is loaded when first needed; where
// it is missing, or has no plan for a problem, or TROUPE_ATTENTION=own is set,
// attention_cudnn_supported is false and the caller runs troupe's own kernels. Its backward adds
// dQ up with atomics (not bit-for-bit repeatable), and its staging (the packed operands and
// results, about twice troupe's kernels') is taken per call like theirs.
// Device pointers; `stream` is a cudaStream_t.

#include <cstddef>

#include "kernels/cuda/attention.hpp"

namespace troupe::kernels::cuda {

/// Whether cuDNN runs this problem's forward (or backward) on the current device: this build
/// has the cuDNN frontend, libcudnn.so.9 loads, and cuDNN builds a plan for the sizes (built on
/// the first call and kept; a problem it refuses is named once on stderr).
bool attention_cudnn_supported(const attention_problem& problem, bool backward);

/// Bytes of device memory the call needs in `staging`: the packed BF16 operands and results and
/// cuDNN's workspace (0 when unsupported).
std::size_t attention_cudnn_staging_bytes(const attention_problem& problem, bool backward);

/// o and lse (natural log, [batch, heads, length] contiguous), as attention_forward_bf16.
void attention_forward_cudnn(const attention_problem& problem, attention_operand q,
                             attention_operand k, attention_operand key_rope, attention_operand v,
                             attention_result o, float* lse, void* stream, void* staging);

/// dq, dk (the nope columns), d_key_rope (per head) and dv, all overwritten.
void attention_backward_cudnn(const attention_problem& problem, attention_operand q,
                              attention_operand k, attention_operand key_rope, attention_operand v,
                              attention_operand o, attention_operand d_o, const float* lse,
                              attention_result dq, attention_result dk, attention_result d_key_rope,
                              attention_result dv, void* stream, void* staging);

}  // namespace troupe::kernels::cuda
