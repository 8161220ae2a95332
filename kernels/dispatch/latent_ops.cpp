#include "kernels/dispatch/latent_ops.hpp"

#include <algorithm>
#include <stdexcept>

#include "kernels/cpu/rope.hpp"
#include "kernels/dispatch/op_timing.hpp"
#include "kernels/dispatch/require_cuda.hpp"
#include "troupe_build_config.h"

#if TROUPE_HAVE_CUDA
#include "kernels/cuda/latent_attention.hpp"
#endif

namespace troupe::kernels {

using detail::require_cuda;

namespace {

/// Query rows per CPU attention task: bounds its scores to 64 x context floats.
constexpr std::int64_t query_chunk = 64;

bool is_bf16(DLDataType t) {
  return t.code == kDLBfloat && t.bits == 16;
}

}  // namespace

latent_step::latent_step(const troupe_exec_context* context, const troupe_kv_cache& cache)
    : cache_(&cache), on_device_(on_gpu(context)) {
  for (std::int32_t s = 0; s < cache.num_sequences; ++s)
    for (std::int64_t j = 0; j < cache.new_tokens[s]; ++j) {
      sequence_.push_back(s);
      position_.push_back(cache.cached_tokens[s] + j);
    }
  if (!on_device_ || position_.empty()) return;
  const auto tables =
      static_cast<std::size_t>(cache.num_sequences) * static_cast<std::size_t>(cache.max_blocks);
  device_sequence_.allocate(context, sequence_.size());
  device_position_.allocate(context, position_.size());
  device_tables_.allocate(context, tables);
  ops::copy_from_host(context, device_sequence_.data(), sequence_.data(),
                      sequence_.size() * sizeof(std::int32_t));
  ops::copy_from_host(context, device_position_.data(), position_.data(),
                      position_.size() * sizeof(std::int64_t));
  ops::copy_from_host(context, device_tables_.data(), cache.block_tables,
                      tables * sizeof(std::int32_t));
}

cpu::paged_latent latent_step::layer() const {
  const troupe_kv_cache& c = *cache_;
  return {c.pool,
          is_bf16(c.dtype),
          c.width,
          c.block_tokens,
          c.block_stride,
          c.layer_offset,
          on_device_ ? device_tables_.data() : c.block_tables,
          c.max_blocks};
}

namespace ops {

void rope_rotate_at(const troupe_exec_context* context, const latent_step& step, float* x,
                    std::int64_t rows, std::int64_t stride, std::int64_t dim, std::int64_t heads,
                    rope_table& table) {
  const op_scope timing(context, op_class::elementwise);
  std::int64_t end = 0;
  for (std::int64_t p : step.positions()) end = std::max(end, p + 1);
  const auto [cos_table, sin_table] = table.on(context, end);
  if (!on_gpu(context)) {
    cpu::rope_rotate_at(x, rows, stride, dim, heads, step.positions().data(), cos_table, sin_table,
                        +1);
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::rope_rotate_at(x, rows, stride, dim, heads, step.device_positions(), cos_table, sin_table,
                       context->stream);
#endif
}

void latent_cache_write(const troupe_exec_context* context, const latent_step& step,
                        const float* latent, const float* rope, std::int64_t kv_rank,
                        std::int64_t rope_dim) {
  const op_scope timing(context, op_class::elementwise);
  const cpu::paged_latent layer = step.layer();
  if (!on_gpu(context)) {
    const troupe_kv_cache& c = step.cache();
    std::int64_t first = 0;
    for (std::int32_t s = 0; s < c.num_sequences; ++s) {
      cpu::latent_cache_write(layer, s, c.cached_tokens[s], latent + first * kv_rank,
                              rope + first * rope_dim, c.new_tokens[s], kv_rank, rope_dim);
      first += c.new_tokens[s];
    }
    return;
  }
  require_cuda();
#if TROUPE_HAVE_CUDA
  cuda::latent_cache_write(layer, step.device_sequences(), step.device_positions(), latent, rope,
                           step.rows(), kv_rank, rope_dim, context->stream);
#endif
}

void latent_attention(const troupe_exec_context* context, const latent_step& step,
                      const float* queries, float* out, std::int64_t heads, std::int64_t kv_rank,
                      float scale) {
  const op_scope timing(context, op_class::attention);
  const cpu::paged_latent layer = step.layer();
  if (on_gpu(context)) {
    require_cuda();
#if TROUPE_HAVE_CUDA
    cuda::latent_attention(layer, step.device_sequences(), step.device_positions(), queries, out,
                           step.rows(), heads, kv_rank, scale, context->stream);
#endif
    return;
  }
  // Per sequence: its cached rows gathered once as f32, then (head, chunk of rows) tasks.
  const troupe_kv_cache& c = step.cache();
  const std::int64_t width = layer.width;
  std::vector<float> keys;
  std::int64_t first = 0;
  for (std::int32_t s = 0; s < c.num_sequences; ++s) {
    const std::int64_t fresh = c.new_tokens[s], offset = c.cached_tokens[s];
    if (fresh == 0) continue;
    keys.resize(static_cast<std::size_t>((offset + fresh) * width));
    cpu::latent_cache_gather(layer, s, offset + fresh, keys.data());
    const std::int64_t chunks = (fresh + query_chunk - 1) / query_chunk;
    parallel_for(context, heads * chunks, 1, [&](std::int64_t begin, std::int64_t end) {
      std::vector<float> scratch(
          static_cast<std::size_t>(cpu::latent_attention_scratch(query_chunk, offset + fresh)));
      for (std::int64_t task = begin; task < end; ++task) {
        const std::int64_t h = task / chunks, c0 = (task % chunks) * query_chunk;
        const std::int64_t n = std::min(query_chunk, fresh - c0);
        const std::int64_t row = first + c0;
        cpu::latent_attention_rows(
            queries + (row * heads + h) * width, heads * width, keys.data(), offset + c0, n, width,
            kv_rank, scale, out + (row * heads + h) * kv_rank, heads * kv_rank, scratch.data());
      }
    });
    first += fresh;
  }
}

}  // namespace ops

}  // namespace troupe::kernels
