#pragma once

// A stable sort of indices by small integer keys on a CUDA device (CUB's radix sort): what
// token permutation to experts and the embedding's gradient both need. Device pointers;
// `stream` is a cudaStream_t; no host round trip.

#include <cstddef>
#include <cstdint>

namespace troupe::kernels::cuda {

/// Bytes of scratch sort_indices_by_key needs for `count` keys below `key_limit`.
std::size_t sort_indices_scratch_bytes(std::int64_t count, std::int32_t key_limit);

/// sorted_keys[r], order[r]: the keys in increasing order and the index each came from; equal
/// keys keep their index order. A key outside [0, key_limit) sorts as key_limit (after all).
void sort_indices_by_key(const std::int32_t* keys, std::int64_t count, std::int32_t key_limit,
                         std::int32_t* sorted_keys, std::int64_t* order, void* scratch,
                         std::size_t scratch_bytes, void* stream);

}  // namespace troupe::kernels::cuda
