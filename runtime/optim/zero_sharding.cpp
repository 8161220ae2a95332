#include "runtime/optim/zero_sharding.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

/// Elements `r` of `t` as a flat view (on t's device).
tensor view_of(const tensor& t, element_range r) {
  return t.reshape({t.numel()}).narrow(0, r.begin, r.size());
}

/// The view's elements on the host (a copy from a GPU).
tensor on_host(const tensor& t) {
  return t.where().is_cpu() ? t : t.to(device::cpu());
}

/// NOTES: the keys name the piece completely (parameter, keeping slot, sending slot, first
/// element), so that a rank holding a parameter twice (two chunks) and pieces of many parameters
/// in one message need no agreed order.
std::string gradient_key(const std::string& name, std::size_t keeper, std::size_t from,
                         std::int64_t begin) {
  return fmt::format("{}#{}#{}@{}", name, keeper, from, begin);
}

std::string value_key(const std::string& name, std::size_t keeper, std::int64_t begin) {
  return fmt::format("{}#{}@{}", name, keeper, begin);
}

const tensor& find_piece(const std::map<std::int32_t, zero_pieces>& received, std::int32_t from,
                         const std::string& key, std::int64_t numel) {
  auto it = received.find(from);
  if (it != received.end())
    for (const auto& [name, t] : it->second)
      if (name == key) {
        if (t.type() != dtype::f32 || t.numel() != numel)
          fail("ZeRO-1: the piece {} from rank {} is {}, expected f32 of {} elements", key, from,
               t.describe(), numel);
        return t;
      }
  fail("ZeRO-1: rank {} sent no piece {}", from, key);
}

}  // namespace

element_range zero_slice(std::int64_t numel, std::int32_t k, std::int32_t holders) {
  if (holders < 1 || k < 0 || k >= holders)
    fail("ZeRO-1: slice {} of {} holders does not exist", k, holders);
  const std::int64_t base = numel / holders, extra = numel % holders;
  const std::int64_t begin = k * base + std::min<std::int64_t>(k, extra);
  return {begin, begin + base + (k < extra ? 1 : 0)};
}

zero_sharding::zero_sharding(const zero_layout& layout, std::int32_t rank,
                             std::int64_t bucket_elements)
    : rank_(rank) {
  if (bucket_elements < 1) fail("ZeRO-1: buckets of {} elements", bucket_elements);
  std::set<std::int32_t> peers;
  std::int64_t filled = bucket_elements;  // the next unit opens a bucket
  for (const auto& [name, entry] : layout.parameters) {
    share s{name, entry.numel, entry.slots, false};
    s.held = holds(s, rank);
    if (s.held)
      for (const zero_slot& slot : s.slots)
        if (slot.rank != rank) peers.insert(slot.rank);
    // Every slice, cut where the bucket fills.
    for (std::size_t k = 0; k < s.slots.size(); ++k) {
      const element_range r = slice(s, k);
      for (std::int64_t begin = r.begin; begin < r.end;) {
        if (filled == bucket_elements) {
          buckets_.emplace_back();
          filled = 0;
        }
        const std::int64_t end = std::min(r.end, begin + bucket_elements - filled);
        buckets_.back().push_back({shares_.size(), k, {begin, end}});
        filled += end - begin;
        begin = end;
      }
    }
    shares_.push_back(std::move(s));
  }
  peers_.assign(peers.begin(), peers.end());
}

bool zero_sharding::holds(const share& s, std::int32_t rank) const {
  return std::any_of(s.slots.begin(), s.slots.end(),
                     [rank](const zero_slot& slot) { return slot.rank == rank; });
}

element_range zero_sharding::slice(const share& s, std::size_t k) const {
  return zero_slice(s.numel, static_cast<std::int32_t>(k),
                    static_cast<std::int32_t>(s.slots.size()));
}

std::map<std::string, element_range> zero_sharding::ranges_of(std::int32_t chunk) const {
  std::map<std::string, element_range> out;
  for (const share& s : shares_)
    for (std::size_t k = 0; k < s.slots.size(); ++k)
      if (s.slots[k] == zero_slot{rank_, chunk}) out[s.name] = slice(s, k);
  return out;
}

zero_pieces zero_sharding::gradient_pieces(std::int32_t peer, const chunk_tensor& grad,
                                           std::size_t bucket) const {
  zero_pieces out;
  for (const unit& u : buckets_.at(bucket)) {
    const share& s = shares_[u.share];
    if (s.slots[u.keeper].rank != peer || !s.held) continue;
    for (std::size_t j = 0; j < s.slots.size(); ++j)
      if (s.slots[j].rank == rank_)
        out.emplace_back(gradient_key(s.name, u.keeper, j, u.range.begin),
                         view_of(grad(s.slots[j].chunk, s.name), u.range).to(device::cpu()));
  }
  return out;
}

void zero_sharding::reduce(const std::map<std::int32_t, zero_pieces>& received,
                           const chunk_tensor& grad, std::size_t bucket,
                           gradient_summary& summary) const {
  for (const unit& u : buckets_.at(bucket)) {
    const share& s = shares_[u.share];
    const zero_slot& keeper = s.slots[u.keeper];
    if (keeper.rank != rank_) continue;
    const element_range r = u.range;
    // The sum in slot order, as the coordinator sums without ZeRO (a left fold in f32).
    tensor sum = tensor::empty(dtype::f32, {r.size()});
    float* out = sum.data_as<float>();
    for (std::size_t j = 0; j < s.slots.size(); ++j) {
      const zero_slot& from = s.slots[j];
      const tensor piece = from.rank == rank_
                               ? on_host(view_of(grad(from.chunk, s.name), r))
                               : find_piece(received, from.rank,
                                            gradient_key(s.name, u.keeper, j, r.begin), r.size());
      const float* g = piece.data_as<const float>();
      if (j == 0)
        std::copy(g, g + r.size(), out);
      else
        for (std::int64_t i = 0; i < r.size(); ++i) out[i] += g[i];
    }
    double squares = 0.0;
    for (std::int64_t i = 0; i < r.size(); ++i)
      squares += static_cast<double>(out[i]) * static_cast<double>(out[i]);
    if (!std::isfinite(squares) && summary.non_finite.empty()) summary.non_finite = s.name;
    summary.norm_squared += squares;
    tensor target = view_of(grad(keeper.chunk, s.name), r);
    target.copy_from(sum);
  }
}

zero_pieces zero_sharding::value_pieces(std::int32_t peer, const chunk_tensor& value,
                                        std::size_t bucket) const {
  zero_pieces out;
  for (const unit& u : buckets_.at(bucket)) {
    const share& s = shares_[u.share];
    const zero_slot& keeper = s.slots[u.keeper];
    if (keeper.rank != rank_ || !holds(s, peer)) continue;
    out.emplace_back(value_key(s.name, u.keeper, u.range.begin),
                     view_of(value(keeper.chunk, s.name), u.range).to(device::cpu()));
  }
  return out;
}

void zero_sharding::gather(const std::map<std::int32_t, zero_pieces>& received,
                           const chunk_tensor& value, std::size_t bucket) const {
  for (const unit& u : buckets_.at(bucket)) {
    const share& s = shares_[u.share];
    if (!s.held) continue;
    const zero_slot& keeper = s.slots[u.keeper];
    const tensor source =
        keeper.rank == rank_
            ? view_of(value(keeper.chunk, s.name), u.range)
            : find_piece(received, keeper.rank, value_key(s.name, u.keeper, u.range.begin),
                         u.range.size());
    for (const zero_slot& slot : s.slots) {
      if (slot.rank != rank_ || slot == keeper) continue;
      tensor target = view_of(value(slot.chunk, s.name), u.range);
      target.copy_from(source);
    }
  }
}

}  // namespace troupe
