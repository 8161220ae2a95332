#pragma once

// MLA's inference cache, paged. Per layer and token MLA keeps only the compressed kv latent
// (kv_lora_rank values) and the shared rope key (qk_rope_head_dim values): DeepSeek-V3's 61
// layers x (512 + 64) BF16 values are 70,272 bytes per token. The cache is a pool of fixed-size
// blocks on one device, sized from a memory budget; each sequence owns a block table, grows a
// block at a time without moving what it holds, and gives its blocks back when it ends, so many
// sequences of different lengths share one pool (vLLM's paged attention, for latents).
//
// Layout: block b holds, for every layer, `block_tokens` rows of `kv_lora_rank + rope_dim`
// values: [block][layer][token][latent | rope]. A (block, layer) tile is contiguous, which is
// what attention over a sequence's latents walks.

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "runtime/abi/troupe_plugin.h"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

struct latent_cache_shape {
  std::int64_t layers = 0;
  std::int64_t kv_lora_rank = 0;
  std::int64_t rope_dim = 0;
  dtype type = dtype::bf16;
  std::int64_t block_tokens = 64;

  std::int64_t width() const { return kv_lora_rank + rope_dim; }
  /// Bytes one token takes over every layer.
  std::int64_t bytes_per_token() const;
  /// Bytes of one block.
  std::int64_t bytes_per_block() const { return bytes_per_token() * block_tokens; }
};

/// One sequence's cached rows, out of a cache: what prefill hands to decode (disaggregated
/// serving). `blocks` holds the sequence's whole blocks in the cache's layout, [block][layer]
/// [token][latent | rope], as u8 on whatever device it was copied to.
struct latent_rows {
  latent_cache_shape shape;
  std::int64_t length = 0;  ///< positions held
  tensor blocks;            ///< u8 [ceil(length / block_tokens) * bytes_per_block]
};

class latent_cache {
 public:
  using sequence_id = std::uint64_t;

  /// As many blocks as `budget_bytes` holds, allocated now on `where`. Throws troupe::error for
  /// a shape with a non-positive size or a budget below one block.
  latent_cache(const latent_cache_shape& shape, std::uint64_t budget_bytes, device where);
  latent_cache(const latent_cache&) = delete;  // two caches would hand out the same blocks
  latent_cache& operator=(const latent_cache&) = delete;
  latent_cache(latent_cache&&) = default;
  latent_cache& operator=(latent_cache&&) = default;

  const latent_cache_shape& shape() const { return shape_; }
  device where() const { return pool_.where(); }
  std::int64_t total_blocks() const { return blocks_; }
  std::int64_t free_blocks() const { return static_cast<std::int64_t>(free_.size()); }
  /// Tokens the free blocks hold.
  std::int64_t free_tokens() const { return free_blocks() * shape_.block_tokens; }

  /// A new sequence of length 0 (no block yet).
  sequence_id add_sequence();
  /// Makes room for `tokens` more positions after the sequence's length, taking blocks from the
  /// pool; false (and nothing taken) when the pool has too few.
  bool reserve(sequence_id sequence, std::int64_t tokens);
  /// Counts `tokens` more positions as written (within what reserve made room for).
  void advance(sequence_id sequence, std::int64_t tokens);
  /// Rolls a sequence back to its first `tokens` positions (speculative tokens the model did not
  /// accept); it keeps its blocks, and the next write overwrites what was dropped.
  void truncate(sequence_id sequence, std::int64_t tokens);
  /// Ends a sequence: its blocks go back to the pool.
  void release(sequence_id sequence);

  /// A copy of the sequence's rows on `where` (the sequence stays).
  latent_rows export_rows(sequence_id sequence, device where) const;
  /// A new sequence holding `rows` (from a cache of the same shape, on any device). Throws
  /// troupe::error naming the difference for another shape, or the shortfall when the pool has
  /// too few free blocks (nothing is taken then).
  sequence_id import_rows(const latent_rows& rows);

  std::int64_t length(sequence_id sequence) const;
  /// Positions the sequence's blocks hold (length() rounded up to blocks, or more after reserve).
  std::int64_t capacity(sequence_id sequence) const;
  std::span<const std::int32_t> block_table(sequence_id sequence) const;
  std::int64_t sequences() const { return static_cast<std::int64_t>(tables_.size()); }

  /// The kv_lora_rank + rope_dim values of position `position` in layer `layer` (a position
  /// below capacity()).
  void* slot(sequence_id sequence, std::int64_t layer, std::int64_t position);
  /// The [block_tokens][width] tile of layer `layer` in block `block`.
  void* tile(std::int32_t block, std::int64_t layer);
  /// The pool's first byte (device memory on its device).
  void* pool() { return pool_.data(); }

 private:
  struct table {
    std::vector<std::int32_t> blocks;
    std::int64_t length = 0;
  };
  table& at(sequence_id sequence);
  const table& at(sequence_id sequence) const;

  latent_cache_shape shape_;
  std::int64_t blocks_ = 0;
  tensor pool_;
  std::vector<std::int32_t> free_;
  std::unordered_map<sequence_id, table> tables_;
  sequence_id next_ = 1;
};

/// One forward's use of the cache: which sequences get how many new tokens, described as the
/// attention plugins take it (troupe_kv_cache), one layer at a time. The constructor reserves the
/// blocks; commit() counts the tokens as written once the forward has run.
class cache_step {
 public:
  /// Throws troupe::error naming the shortfall when the pool cannot hold the new tokens (nothing
  /// is reserved then).
  cache_step(latent_cache& cache, std::span<const latent_cache::sequence_id> sequences,
             std::span<const std::int64_t> new_tokens);
  /// The same with each sequence's new tokens starting at `starts` (at most its length): layers
  /// that fill positions other layers already hold (the MTP modules' after the main model's).
  cache_step(latent_cache& cache, std::span<const latent_cache::sequence_id> sequences,
             std::span<const std::int64_t> new_tokens, std::span<const std::int64_t> starts);

  /// The description layer `layer` of the cache gets; valid while this step lives.
  troupe_kv_cache layer(std::int64_t layer) const;
  /// New tokens over all sequences: the rows of the forward's input.
  std::int64_t rows() const { return rows_; }
  std::span<const latent_cache::sequence_id> sequences() const { return sequences_; }
  /// Positions cached before this step, per sequence.
  std::span<const std::int64_t> cached() const { return cached_; }
  std::span<const std::int64_t> new_tokens() const { return new_; }
  /// Counts every sequence's new tokens as written: its length becomes at least start + new.
  void commit();

 private:
  latent_cache* cache_;
  std::vector<latent_cache::sequence_id> sequences_;
  std::vector<std::int64_t> cached_, new_;
  std::vector<std::int32_t> tables_;  // [sequences][max_blocks_], -1 past a sequence's blocks
  std::int32_t max_blocks_ = 0;
  std::int64_t rows_ = 0;
};

}  // namespace troupe
