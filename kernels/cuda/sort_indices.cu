#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/sort_indices.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

/// Bits the radix sort looks at: keys are in [0, key_limit].
int key_bits(std::int32_t key_limit) {
  int bits = 1;
  while (bits < 31 && (std::int64_t{1} << bits) <= key_limit) ++bits;
  return bits;
}

std::size_t aligned(std::size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

std::size_t cub_bytes(std::int64_t count, std::int32_t key_limit) {
  std::size_t bytes = 0;
  TROUPE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const std::int32_t*>(nullptr),
      static_cast<std::int32_t*>(nullptr), static_cast<const std::int64_t*>(nullptr),
      static_cast<std::int64_t*>(nullptr), static_cast<int>(count), 0, key_bits(key_limit)));
  return bytes;
}

__global__ void prepare_kernel(const std::int32_t* keys, std::int64_t count, std::int32_t key_limit,
                               std::int32_t* clamped, std::int64_t* indices) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  const std::int32_t key = keys[i];
  clamped[i] = key < 0 || key >= key_limit ? key_limit : key;
  indices[i] = i;
}

}  // namespace

std::size_t sort_indices_scratch_bytes(std::int64_t count, std::int32_t key_limit) {
  return aligned(static_cast<std::size_t>(count) * sizeof(std::int32_t)) +
         aligned(static_cast<std::size_t>(count) * sizeof(std::int64_t)) +
         aligned(cub_bytes(count, key_limit));
}

void sort_indices_by_key(const std::int32_t* keys, std::int64_t count, std::int32_t key_limit,
                         std::int32_t* sorted_keys, std::int64_t* order, void* scratch,
                         std::size_t scratch_bytes, void* stream) {
  require(count < (std::int64_t{1} << 31) && key_limit >= 0, "sort_indices_by_key",
          "more than 2^31 keys or a negative key limit");
  require(scratch_bytes >= sort_indices_scratch_bytes(count, key_limit), "sort_indices_by_key",
          "scratch smaller than sort_indices_scratch_bytes");
  if (count == 0) return;
  auto* bytes = static_cast<char*>(scratch);
  const std::size_t keys_bytes = aligned(static_cast<std::size_t>(count) * sizeof(std::int32_t));
  const std::size_t indices_bytes = aligned(static_cast<std::size_t>(count) * sizeof(std::int64_t));
  auto* clamped = reinterpret_cast<std::int32_t*>(bytes);
  auto* indices = reinterpret_cast<std::int64_t*>(bytes + keys_bytes);
  std::size_t temporary = scratch_bytes - keys_bytes - indices_bytes;
  prepare_kernel<<<blocks_for(count, threads), threads, 0, as_stream(stream)>>>(
      keys, count, key_limit, clamped, indices);
  TROUPE_CUDA_LAUNCHED();
  // Radix sort is stable: equal keys keep their index order.
  TROUPE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      bytes + keys_bytes + indices_bytes, temporary, clamped, sorted_keys, indices, order,
      static_cast<int>(count), 0, key_bits(key_limit), as_stream(stream)));
}

}  // namespace troupe::kernels::cuda
