#include "kernels/cuda/embedding.hpp"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/sort_indices.hpp"

namespace troupe::kernels::cuda {

namespace {

constexpr int threads = 256;

std::size_t aligned(std::size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

__global__ void embedding_forward_kernel(const float* table, std::int64_t vocab, std::int64_t width,
                                         const std::int32_t* tokens, float* out) {
  const std::int64_t t = blockIdx.x;
  const std::int32_t id = tokens[t];
  float* target = out + t * width;
  const bool valid = id >= 0 && id < vocab;
  const float* source = table + (valid ? id : 0) * width;
  for (std::int64_t i = threadIdx.x; i < width; i += blockDim.x)
    target[i] = valid ? source[i] : 0.0f;
}

// Thread (r, c): when sorted row r starts a run of one id, sums column c of the run's rows in
// position order into the table's gradient.
__global__ void embedding_backward_kernel(const float* dout, const std::int32_t* sorted,
                                          const std::int64_t* order, std::int64_t count,
                                          std::int64_t vocab, std::int64_t width, float* dtable) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t c = blockIdx.y * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (c >= width) return;
  const std::int32_t id = sorted[r];
  if (id >= vocab || (r > 0 && sorted[r - 1] == id)) return;
  float sum = 0.0f;
  for (std::int64_t j = r; j < count && sorted[j] == id; ++j) sum += dout[order[j] * width + c];
  dtable[id * width + c] += sum;
}

}  // namespace

void embedding_forward(const float* table, std::int64_t vocab, std::int64_t width,
                       const std::int32_t* tokens, std::int64_t count, float* out, void* stream) {
  if (count == 0) return;
  embedding_forward_kernel<<<static_cast<unsigned>(count), threads, 0, as_stream(stream)>>>(
      table, vocab, width, tokens, out);
  TROUPE_CUDA_LAUNCHED();
}

std::size_t embedding_backward_scratch_bytes(std::int64_t count, std::int64_t vocab) {
  return aligned(static_cast<std::size_t>(count) * sizeof(std::int32_t)) +
         aligned(static_cast<std::size_t>(count) * sizeof(std::int64_t)) +
         sort_indices_scratch_bytes(count, static_cast<std::int32_t>(vocab));
}

void embedding_backward(const float* dout, const std::int32_t* tokens, std::int64_t count,
                        std::int64_t vocab, std::int64_t width, float* dtable, void* scratch,
                        std::size_t scratch_bytes, void* stream) {
  require(vocab > 0 && vocab < (std::int64_t{1} << 31) - 1, "embedding_backward",
          "vocabulary size out of range");
  require(scratch_bytes >= embedding_backward_scratch_bytes(count, vocab), "embedding_backward",
          "scratch smaller than embedding_backward_scratch_bytes");
  if (count == 0) return;
  const std::size_t keys = aligned(static_cast<std::size_t>(count) * sizeof(std::int32_t));
  const std::size_t indices = aligned(static_cast<std::size_t>(count) * sizeof(std::int64_t));
  auto* sorted = static_cast<std::int32_t*>(scratch);
  auto* order = reinterpret_cast<std::int64_t*>(static_cast<char*>(scratch) + keys);
  sort_indices_by_key(tokens, count, static_cast<std::int32_t>(vocab), sorted, order,
                      static_cast<char*>(scratch) + keys + indices, scratch_bytes - keys - indices,
                      stream);
  // NOTES: one block per sorted position (and 256 columns); blocks that do not start a run of
  // one id return at once, so the work is the tokens' rows whatever the vocabulary.
  require(width <= 65535 * threads, "embedding_backward", "width out of range");
  const dim3 grid(static_cast<unsigned>(count), blocks_for(width, threads));
  embedding_backward_kernel<<<grid, threads, 0, as_stream(stream)>>>(dout, sorted, order, count,
                                                                     vocab, width, dtable);
  TROUPE_CUDA_LAUNCHED();
}

}  // namespace troupe::kernels::cuda
