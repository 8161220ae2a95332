#include "runtime/inference/latent_cache.hpp"

#include <algorithm>
#include <limits>

#include "runtime/core/error.hpp"

namespace troupe {

std::int64_t latent_cache_shape::bytes_per_token() const {
  return layers * width() * static_cast<std::int64_t>(size_of(type));
}

latent_cache::latent_cache(const latent_cache_shape& shape, std::uint64_t budget_bytes,
                           device where)
    : shape_(shape) {
  if (shape.layers <= 0 || shape.kv_lora_rank <= 0 || shape.rope_dim < 0 || shape.block_tokens <= 0)
    fail(
        "latent cache: layers {}, kv_lora_rank {}, rope_dim {} and block_tokens {} must be "
        "positive (rope_dim may be 0)",
        shape.layers, shape.kv_lora_rank, shape.rope_dim, shape.block_tokens);
  if (shape.layers > (1 << 20) || shape.width() > (1 << 24) || shape.block_tokens > (1 << 20))
    fail("latent cache: layers {}, width {}, block_tokens {}: beyond any model", shape.layers,
         shape.width(), shape.block_tokens);
  const auto block_bytes = static_cast<std::uint64_t>(shape.bytes_per_block());
  blocks_ = static_cast<std::int64_t>(std::min<std::uint64_t>(
      budget_bytes / block_bytes, std::numeric_limits<std::int32_t>::max()));
  if (blocks_ == 0)
    fail(
        "latent cache: a budget of {} bytes holds no block of {} tokens ({} bytes: {} layers x "
        "{} values x {} bytes per token)",
        budget_bytes, shape.block_tokens, block_bytes, shape.layers, shape.width(),
        size_of(shape.type));
  pool_ = tensor::empty(dtype::u8, {blocks_ * shape.bytes_per_block()}, where);
  free_.resize(static_cast<std::size_t>(blocks_));
  // Handed out from the back: block 0 first.
  for (std::int64_t b = 0; b < blocks_; ++b)
    free_[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(blocks_ - 1 - b);
}

latent_cache::table& latent_cache::at(sequence_id sequence) {
  const auto it = tables_.find(sequence);
  if (it == tables_.end()) fail("latent cache: no sequence {}", sequence);
  return it->second;
}

const latent_cache::table& latent_cache::at(sequence_id sequence) const {
  const auto it = tables_.find(sequence);
  if (it == tables_.end()) fail("latent cache: no sequence {}", sequence);
  return it->second;
}

latent_cache::sequence_id latent_cache::add_sequence() {
  const sequence_id id = next_++;
  tables_.emplace(id, table{});
  return id;
}

bool latent_cache::reserve(sequence_id sequence, std::int64_t tokens) {
  if (tokens < 0) fail("latent cache: reserve {} tokens", tokens);
  table& t = at(sequence);
  if (tokens > capacity(sequence) - t.length + free_tokens()) return false;  // before any overflow
  const std::int64_t needed = (t.length + tokens + shape_.block_tokens - 1) / shape_.block_tokens;
  const auto have = static_cast<std::int64_t>(t.blocks.size());
  if (needed <= have) return true;
  if (needed - have > free_blocks()) return false;
  for (std::int64_t i = have; i < needed; ++i) {
    t.blocks.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void latent_cache::advance(sequence_id sequence, std::int64_t tokens) {
  table& t = at(sequence);
  if (tokens < 0 || tokens > capacity(sequence) - t.length)
    fail("latent cache: sequence {} advances by {} past its capacity {} (length {}): reserve first",
         sequence, tokens, capacity(sequence), t.length);
  t.length += tokens;
}

void latent_cache::truncate(sequence_id sequence, std::int64_t tokens) {
  table& t = at(sequence);
  if (tokens < 0 || tokens > t.length)
    fail("latent cache: sequence {} of length {} cannot be truncated to {}", sequence, t.length,
         tokens);
  t.length = tokens;
}

void latent_cache::release(sequence_id sequence) {
  const auto it = tables_.find(sequence);
  if (it == tables_.end()) fail("latent cache: no sequence {}", sequence);
  free_.insert(free_.end(), it->second.blocks.rbegin(), it->second.blocks.rend());
  tables_.erase(it);
}

std::int64_t latent_cache::length(sequence_id sequence) const {
  return at(sequence).length;
}

std::int64_t latent_cache::capacity(sequence_id sequence) const {
  return static_cast<std::int64_t>(at(sequence).blocks.size()) * shape_.block_tokens;
}

std::span<const std::int32_t> latent_cache::block_table(sequence_id sequence) const {
  return at(sequence).blocks;
}

latent_rows latent_cache::export_rows(sequence_id sequence, device where) const {
  const table& t = at(sequence);
  const std::int64_t bytes = shape_.bytes_per_block();
  const std::int64_t used = (t.length + shape_.block_tokens - 1) / shape_.block_tokens;
  latent_rows rows{shape_, t.length,
                   tensor::empty(dtype::u8, {std::max<std::int64_t>(used, 1) * bytes}, where)};
  // NOTES: block by block: a sequence's blocks lie anywhere in the pool; each is contiguous.
  for (std::int64_t b = 0; b < used; ++b)
    rows.blocks.narrow(0, b * bytes, bytes)
        .copy_from(pool_.narrow(0, t.blocks[static_cast<std::size_t>(b)] * bytes, bytes));
  return rows;
}

latent_cache::sequence_id latent_cache::import_rows(const latent_rows& rows) {
  const latent_cache_shape& s = rows.shape;
  if (s.layers != shape_.layers || s.kv_lora_rank != shape_.kv_lora_rank ||
      s.rope_dim != shape_.rope_dim || s.type != shape_.type ||
      s.block_tokens != shape_.block_tokens)
    fail(
        "latent cache: rows of {} layers x ({} + {}) {} in blocks of {} cannot go into a cache of "
        "{} layers x ({} + {}) {} in blocks of {}",
        s.layers, s.kv_lora_rank, s.rope_dim, name_of(s.type), s.block_tokens, shape_.layers,
        shape_.kv_lora_rank, shape_.rope_dim, name_of(shape_.type), shape_.block_tokens);
  const std::int64_t bytes = shape_.bytes_per_block();
  const std::int64_t used = (rows.length + shape_.block_tokens - 1) / shape_.block_tokens;
  if (rows.length < 0 || rows.blocks.numel() < used * bytes)
    fail("latent cache: rows of {} positions come with {} bytes; they need {}", rows.length,
         rows.blocks.numel(), used * bytes);
  const sequence_id id = add_sequence();
  if (!reserve(id, rows.length)) {
    release(id);
    fail("latent cache: {} positions need {} blocks; {} of {} are free", rows.length, used,
         free_blocks(), blocks_);
  }
  const table& t = at(id);
  for (std::int64_t b = 0; b < used; ++b)
    pool_.narrow(0, t.blocks[static_cast<std::size_t>(b)] * bytes, bytes)
        .copy_from(rows.blocks.narrow(0, b * bytes, bytes));
  advance(id, rows.length);
  return id;
}

void* latent_cache::tile(std::int32_t block, std::int64_t layer) {
  if (block < 0 || block >= blocks_ || layer < 0 || layer >= shape_.layers)
    fail("latent cache: block {} layer {} outside {} blocks of {} layers", block, layer, blocks_,
         shape_.layers);
  const std::int64_t tile_bytes =
      shape_.block_tokens * shape_.width() * static_cast<std::int64_t>(size_of(shape_.type));
  return static_cast<char*>(pool_.data()) + block * shape_.bytes_per_block() + layer * tile_bytes;
}

void* latent_cache::slot(sequence_id sequence, std::int64_t layer, std::int64_t position) {
  const table& t = at(sequence);
  if (position < 0 || position >= capacity(sequence))
    fail("latent cache: position {} of sequence {} is outside its {} reserved positions", position,
         sequence, capacity(sequence));
  const std::int32_t block = t.blocks[static_cast<std::size_t>(position / shape_.block_tokens)];
  const std::int64_t row = position % shape_.block_tokens;
  return static_cast<char*>(tile(block, layer)) +
         row * shape_.width() * static_cast<std::int64_t>(size_of(shape_.type));
}

// ---- cache_step -------------------------------------------------------------------------------

cache_step::cache_step(latent_cache& cache, std::span<const latent_cache::sequence_id> sequences,
                       std::span<const std::int64_t> new_tokens)
    : cache_step(cache, sequences, new_tokens, {}) {}

cache_step::cache_step(latent_cache& cache, std::span<const latent_cache::sequence_id> sequences,
                       std::span<const std::int64_t> new_tokens,
                       std::span<const std::int64_t> starts)
    : cache_(&cache), sequences_(sequences.begin(), sequences.end()) {
  if (sequences.size() != new_tokens.size() || sequences.empty() ||
      (!starts.empty() && starts.size() != sequences.size()))
    fail("latent cache: a step needs one new-token count per sequence ({} sequences, {} counts)",
         sequences.size(), new_tokens.size());
  std::vector<std::int64_t> first(sequences.size());
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    first[i] = starts.empty() ? cache.length(sequences[i]) : starts[i];
    if (first[i] < 0 || first[i] > cache.length(sequences[i]))
      fail("latent cache: a step starting at position {} of sequence {} of length {}", first[i],
           sequences[i], cache.length(sequences[i]));
  }
  std::int64_t needed = 0;
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    const auto id = sequences[i];
    const std::int64_t beyond = first[i] + new_tokens[i] - cache.capacity(id);
    if (new_tokens[i] < 0) fail("latent cache: {} new tokens for sequence {}", new_tokens[i], id);
    if (beyond > 0)
      needed += (beyond + cache.shape().block_tokens - 1) / cache.shape().block_tokens;
  }
  if (needed > cache.free_blocks())
    fail(
        "the KV cache is full: this step needs {} more blocks of {} tokens, {} of {} are free "
        "(raise the cache budget or shorten the sequences)",
        needed, cache.shape().block_tokens, cache.free_blocks(), cache.total_blocks());
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    const std::int64_t more = first[i] + new_tokens[i] - cache.length(sequences[i]);
    if (more > 0 && !cache.reserve(sequences[i], more))
      fail("latent cache: reserving {} tokens for sequence {} failed", more, sequences[i]);
    cached_.push_back(first[i]);
    new_.push_back(new_tokens[i]);
    rows_ += new_tokens[i];
    max_blocks_ =
        std::max(max_blocks_, static_cast<std::int32_t>(cache.block_table(sequences[i]).size()));
  }
  tables_.assign(sequences.size() * static_cast<std::size_t>(max_blocks_), -1);
  for (std::size_t i = 0; i < sequences.size(); ++i) {
    const auto blocks = cache.block_table(sequences[i]);
    std::copy(
        blocks.begin(), blocks.end(),
        tables_.begin() + static_cast<std::ptrdiff_t>(i * static_cast<std::size_t>(max_blocks_)));
  }
}

troupe_kv_cache cache_step::layer(std::int64_t layer) const {
  const latent_cache_shape& shape = cache_->shape();
  if (layer < 0 || layer >= shape.layers)
    fail("latent cache: layer {} outside its {} layers", layer, shape.layers);
  troupe_kv_cache view{};
  view.struct_size = sizeof(view);
  view.pool = cache_->pool();
  view.dtype = to_dlpack(shape.type);
  view.width = shape.width();
  view.block_tokens = shape.block_tokens;
  view.block_stride = shape.layers * shape.block_tokens * shape.width();
  view.layer_offset = layer * shape.block_tokens * shape.width();
  view.num_sequences = static_cast<std::int32_t>(sequences_.size());
  view.max_blocks = max_blocks_;
  view.block_tables = tables_.data();
  view.cached_tokens = cached_.data();
  view.new_tokens = new_.data();
  return view;
}

void cache_step::commit() {
  for (std::size_t i = 0; i < sequences_.size(); ++i) {
    const std::int64_t more = cached_[i] + new_[i] - cache_->length(sequences_[i]);
    if (more > 0) cache_->advance(sequences_[i], more);
  }
}

}  // namespace troupe
