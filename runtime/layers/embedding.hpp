#pragma once

// Token embedding: out[t] = table[token[t]]; backward scatters dout rows into the table's
// gradient. A negative token id yields a zero row and receives no gradient (positions without a
// token, such as the tail of a multi-token-prediction window).

#include <cstdint>

#include "runtime/exec/exec_context.hpp"

namespace troupe {

void embedding_forward(const exec_context& context, const float* table, std::int64_t vocab,
                       std::int64_t width, const std::int32_t* tokens, std::int64_t count,
                       float* out);

/// dtable += scattered dout. Serial over tokens so repeated tokens add in a fixed order.
void embedding_backward(const float* dout, const std::int32_t* tokens, std::int64_t count,
                        std::int64_t width, float* dtable);

}  // namespace troupe
