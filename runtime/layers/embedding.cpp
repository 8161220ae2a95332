#include "runtime/layers/embedding.hpp"

#include <cstring>

#include "runtime/core/error.hpp"

namespace troupe {

void embedding_forward(const exec_context& context, const float* table, std::int64_t vocab,
                       std::int64_t width, const std::int32_t* tokens, std::int64_t count,
                       float* out) {
  for (std::int64_t t = 0; t < count; ++t)
    if (tokens[t] >= vocab)
      fail("token id {} at position {} is outside the vocabulary of {}", tokens[t], t, vocab);
  context.pool().parallel_for(count, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t t = begin; t < end; ++t) {
      if (tokens[t] < 0)
        std::memset(out + t * width, 0, static_cast<std::size_t>(width) * sizeof(float));
      else
        std::memcpy(out + t * width, table + tokens[t] * width,
                    static_cast<std::size_t>(width) * sizeof(float));
    }
  });
}

void embedding_backward(const float* dout, const std::int32_t* tokens, std::int64_t count,
                        std::int64_t width, float* dtable) {
  for (std::int64_t t = 0; t < count; ++t) {
    if (tokens[t] < 0) continue;
    float* row = dtable + tokens[t] * width;
    const float* d = dout + t * width;
    for (std::int64_t i = 0; i < width; ++i) row[i] += d[i];
  }
}

}  // namespace troupe
