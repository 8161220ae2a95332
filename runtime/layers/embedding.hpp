#pragma once

// Token embedding: out[t] = table[token[t]]; backward scatters dout rows into the table's
// gradient. A negative token id yields a zero row and receives no gradient (positions without a
// token, such as the tail of a multi-token-prediction window). The token ids are on the host
// (checked there against the vocabulary); table, out and gradients on the context's device.

#include <cstdint>

#include "runtime/exec/exec_context.hpp"

namespace troupe {

void embedding_forward(const exec_context& context, const float* table, std::int64_t vocab,
                       std::int64_t width, const std::int32_t* tokens, std::int64_t count,
                       float* out);

/// dtable += scattered dout, repeated tokens adding in a fixed order (position order on the
/// host; on a GPU, grouped by a stable sort and summed in position order).
void embedding_backward(const exec_context& context, const float* dout, const std::int32_t* tokens,
                        std::int64_t count, std::int64_t width, std::int64_t vocab, float* dtable);

}  // namespace troupe
