#pragma once

// MLA's inference ops over the paged latent cache, on whichever device the exec context names
// (kernels/cpu/latent_attention.hpp or kernels/cuda/latent_attention.hpp): RoPE at the new
// tokens' real positions, the write of their cache rows, and attention in the latent space.

#include <cstdint>
#include <vector>

#include "kernels/cpu/latent_attention.hpp"
#include "kernels/dispatch/device_ops.hpp"
#include "runtime/abi/troupe_plugin.h"

namespace troupe::kernels {

/// One forward_cached call's new rows: for row r its sequence and position, from the host's
/// cache description, and on a GPU their copies (and the block tables') in device memory,
/// uploaded once for every op of the call.
class latent_step {
 public:
  latent_step(const troupe_exec_context* context, const troupe_kv_cache& cache);

  const troupe_kv_cache& cache() const { return *cache_; }
  std::int64_t rows() const { return static_cast<std::int64_t>(position_.size()); }
  const std::vector<std::int64_t>& positions() const { return position_; }
  /// The cache layer as the kernels take it; block tables on the context's device.
  cpu::paged_latent layer() const;
  const std::int32_t* device_sequences() const { return device_sequence_.data(); }
  const std::int64_t* device_positions() const { return device_position_.data(); }

 private:
  const troupe_kv_cache* cache_;
  std::vector<std::int32_t> sequence_;
  std::vector<std::int64_t> position_;
  device_array<std::int32_t> device_sequence_, device_tables_;
  device_array<std::int64_t> device_position_;
  bool on_device_ = false;
};

namespace ops {

/// RoPE forward of `rows` vectors (stride apart) at the step's positions: row r is at the
/// position of new row r / heads.
void rope_rotate_at(const troupe_exec_context* context, const latent_step& step, float* x,
                    std::int64_t rows, std::int64_t stride, std::int64_t dim, std::int64_t heads,
                    rope_table& table);

/// Writes each new row [latent (kv_rank values) | rope (rope_dim values)] into the cache.
void latent_cache_write(const troupe_exec_context* context, const latent_step& step,
                        const float* latent, const float* rope, std::int64_t kv_rank,
                        std::int64_t rope_dim);

/// out [rows][heads][kv_rank] = softmax(scale q' k'^T, causal) c for queries [rows][heads][width]
/// over each row's sequence in the cache, positions 0 to its own.
void latent_attention(const troupe_exec_context* context, const latent_step& step,
                      const float* queries, float* out, std::int64_t heads, std::int64_t kv_rank,
                      float scale);

}  // namespace ops

}  // namespace troupe::kernels
