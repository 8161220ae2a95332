#pragma once

// The token embedding on a CUDA device: rows of a [vocab, width] table. The host checks token
// ids against the vocabulary before they are copied here (it has them first); a negative id is a
// padding position (zeros forward, no gradient), as on the CPU. Device pointers; `stream` is a
// cudaStream_t.

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda {

/// out[t] = table[tokens[t]] (zeros where the id is outside [0, vocab)).
void embedding_forward(const float* table, std::int64_t vocab, std::int64_t width,
                       const std::int32_t* tokens, std::int64_t count, float* out, void* stream);

std::size_t embedding_backward_scratch_bytes(std::int64_t count, std::int64_t vocab);

/// dtable[tokens[t]] += dout[t]. Positions are grouped by id with a stable sort and each id's
/// rows are summed in position order, as the CPU does: no atomics, the same bits every run.
void embedding_backward(const float* dout, const std::int32_t* tokens, std::int64_t count,
                        std::int64_t vocab, std::int64_t width, float* dtable, void* scratch,
                        std::size_t scratch_bytes, void* stream);

}  // namespace troupe::kernels::cuda
