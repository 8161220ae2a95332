#include "runtime/layers/embedding.hpp"

#include <cstring>

#include "runtime/core/error.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/tensor/tensor.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/embedding.hpp"
#include "kernels/dispatch/op_timing.hpp"
#endif

namespace troupe {

namespace {

#if TROUPE_HAVE_CUDA
/// The host's token ids on the context's GPU (a copy ordered on its stream).
tensor device_ids(const exec_context& context, const std::int32_t* tokens, std::int64_t count) {
  tensor ids = tensor::empty(dtype::i32, {count}, context.where());
  cuda::copy_async(ids.data(), tokens, static_cast<std::size_t>(count) * sizeof(std::int32_t),
                   cuda::copy_kind::host_to_device, context.stream(), context.where().index);
  // NOTES: the ids are pageable host memory the caller may reuse at once; waiting here keeps
  // the copy independent of how the driver stages it (count * 4 bytes: microseconds).
  cuda::synchronize_stream(context.stream(), context.where().index);
  return ids;
}
#endif

}  // namespace

void embedding_forward(const exec_context& context, const float* table, std::int64_t vocab,
                       std::int64_t width, const std::int32_t* tokens, std::int64_t count,
                       float* out) {
  for (std::int64_t t = 0; t < count; ++t)
    if (tokens[t] >= vocab)
      fail("token id {} at position {} is outside the vocabulary of {}", tokens[t], t, vocab);
  if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
    const kernels::op_scope timing(context.abi(), kernels::op_class::elementwise);
    const tensor ids = device_ids(context, tokens, count);
    kernels::cuda::embedding_forward(table, vocab, width, ids.data_as<std::int32_t>(), count, out,
                                     context.stream());
#endif
    return;
  }
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

void embedding_backward(const exec_context& context, const float* dout, const std::int32_t* tokens,
                        std::int64_t count, std::int64_t width, std::int64_t vocab, float* dtable) {
  if (context.where().is_cuda()) {
#if TROUPE_HAVE_CUDA
    const kernels::op_scope timing(context.abi(), kernels::op_class::elementwise);
    const tensor ids = device_ids(context, tokens, count);
    const std::size_t bytes = kernels::cuda::embedding_backward_scratch_bytes(count, vocab);
    const tensor scratch =
        tensor::empty(dtype::u8, {static_cast<std::int64_t>(bytes)}, context.where());
    kernels::cuda::embedding_backward(dout, ids.data_as<std::int32_t>(), count, vocab, width,
                                      dtable, scratch.data(), bytes, context.stream());
#else
    (void)vocab;
#endif
    return;
  }
  for (std::int64_t t = 0; t < count; ++t) {
    if (tokens[t] < 0) continue;
    float* row = dtable + tokens[t] * width;
    const float* d = dout + t * width;
    for (std::int64_t i = 0; i < width; ++i) row[i] += d[i];
  }
}

}  // namespace troupe
