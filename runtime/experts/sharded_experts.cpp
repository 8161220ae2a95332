#include "runtime/experts/sharded_experts.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

/// Every one of `experts` on exactly one of `shards` lists (with `replicas`: on at least one,
/// and on no list twice).
void check_lists(const std::vector<std::vector<std::int64_t>>& lists, std::int64_t experts,
                 std::size_t shards, bool replicas, const std::string& where) {
  if (lists.size() != shards)
    fail("{}{} expert lists for {} expert shards", where, lists.size(), shards);
  std::vector<int> owners(static_cast<std::size_t>(experts), 0);
  for (std::size_t s = 0; s < lists.size(); ++s) {
    std::vector<bool> seen(static_cast<std::size_t>(experts), false);
    for (const std::int64_t e : lists[s]) {
      if (e < 0 || e >= experts) fail("{}expert shard lists expert {} of {}", where, e, experts);
      if (seen[static_cast<std::size_t>(e)])
        fail("{}expert shard {} lists expert {} twice", where, s, e);
      seen[static_cast<std::size_t>(e)] = true;
      ++owners[static_cast<std::size_t>(e)];
    }
  }
  for (std::int64_t e = 0; e < experts; ++e) {
    const int n = owners[static_cast<std::size_t>(e)];
    if (n == 0 || (n > 1 && !replicas))
      fail("{}expert {} is owned by {} shards; every expert needs exactly one{}", where, e, n,
           replicas ? " or more" : "");
  }
}

}  // namespace

sharded_experts::sharded_experts(std::vector<std::vector<std::int64_t>> shard_experts,
                                 std::int64_t experts, expert_transport& transport,
                                 options settings)
    : shard_experts_(std::move(shard_experts)),
      experts_(experts),
      transport_(transport),
      settings_(settings) {
  check_lists(shard_experts_, experts_, shard_experts_.size(), settings_.replicas, "");
}

void sharded_experts::set_placement(
    const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& layers) {
  check_placement(layers);
  for (const auto& [layer, lists] : layers) by_layer_[layer] = lists;
}

void sharded_experts::check_placement(
    const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& layers) const {
  if (!in_flight_.empty())
    fail("the expert placement changes only between steps: layer {} micro-batch {} is in flight",
         in_flight_.begin()->first.first, in_flight_.begin()->first.second);
  for (const auto& [layer, lists] : layers)
    check_lists(lists, experts_, shard_experts_.size(), settings_.replicas,
                fmt::format("layer {}: ", layer));
}

const std::vector<std::vector<std::int64_t>>& sharded_experts::lists_for(std::int64_t layer) const {
  auto it = by_layer_.find(layer);
  return it == by_layer_.end() ? shard_experts_ : it->second;
}

sharded_experts::shard_ranges sharded_experts::ranges_of(
    std::int64_t layer, std::span<const std::int64_t> counts) const {
  const auto& lists = lists_for(layer);
  if (static_cast<std::int64_t>(counts.size()) != experts_)
    fail("{} expert row counts for {} experts", counts.size(), experts_);
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(experts_ + 1), 0);
  for (std::int64_t e = 0; e < experts_; ++e)
    offsets[static_cast<std::size_t>(e + 1)] =
        offsets[static_cast<std::size_t>(e)] + counts[static_cast<std::size_t>(e)];
  // A replicated expert's rows split into contiguous parts, one per shard that holds it (in
  // shard order), the first ones a row longer when they do not divide evenly.
  std::vector<std::int64_t> holders(static_cast<std::size_t>(experts_), 0), taken(holders);
  for (const auto& ids : lists)
    for (const std::int64_t e : ids) ++holders[static_cast<std::size_t>(e)];
  shard_ranges ranges(lists.size());
  for (std::size_t s = 0; s < lists.size(); ++s)
    for (const std::int64_t e : lists[s]) {
      const auto i = static_cast<std::size_t>(e);
      const std::int64_t count = counts[i], k = holders[i], j = taken[i]++;
      const std::int64_t first = offsets[i] + j * (count / k) + std::min(j, count % k);
      const std::int64_t size = count / k + (j < count % k ? 1 : 0);
      ranges[s].emplace_back(first, first + size);
    }
  return ranges;
}

tensor sharded_experts::exchange_rows(expert_request::kind what, std::int64_t layer,
                                      std::int64_t micro_batch, const tensor& rows,
                                      const shard_ranges& ranges, wire_precision out) {
  const std::int64_t h = rows.size(1);
  const auto row_bytes = static_cast<std::size_t>(h) * sizeof(float);
  std::vector<std::optional<expert_request>> requests(shard_experts_.size());
  for (std::size_t s = 0; s < shard_experts_.size(); ++s) {
    std::int64_t n = 0;
    for (const auto& [first, end] : ranges[s]) n += end - first;
    tensor part = tensor::empty(dtype::f32, {n, h});
    std::int64_t at = 0;
    for (const auto& [first, end] : ranges[s]) {
      std::memcpy(part.data_as<float>() + at * h, rows.data_as<const float>() + first * h,
                  static_cast<std::size_t>(end - first) * row_bytes);
      at += end - first;
    }
    expert_request request;
    request.what = what;
    request.source = settings_.source;
    request.layer = layer;
    request.micro_batch = micro_batch;
    request.rows = encode_rows(
        part, what == expert_request::kind::forward ? settings_.dispatch : settings_.combine);
    if (what == expert_request::kind::forward)
      for (const auto& [first, end] : ranges[s]) request.counts.push_back(end - first);
    request.reply_precision = out;
    bytes_sent_ += static_cast<std::int64_t>(request.rows.bytes());
    requests[s] = std::move(request);
  }
  const std::vector<expert_reply> replies = transport_.exchange(requests);
  tensor result = tensor::empty(dtype::f32, {rows.size(0), h});
  for (std::size_t s = 0; s < shard_experts_.size(); ++s) {
    bytes_received_ += static_cast<std::int64_t>(replies[s].rows.bytes());
    const tensor part = decode_rows(replies[s].rows);
    std::int64_t at = 0;
    for (const auto& [first, end] : ranges[s]) at += end - first;
    if (part.size(0) != at || part.size(1) != h)
      fail("expert shard {} answered layer {} micro-batch {} with {} for {} rows", s, layer,
           micro_batch, part.describe(), at);
    at = 0;
    for (const auto& [first, end] : ranges[s]) {
      std::memcpy(result.data_as<float>() + first * h, part.data_as<const float>() + at * h,
                  static_cast<std::size_t>(end - first) * row_bytes);
      at += end - first;
    }
  }
  return result;
}

tensor sharded_experts::forward(std::int64_t layer, std::int64_t micro_batch, const tensor& rows,
                                std::span<const std::int64_t> counts) {
  const auto key = std::make_pair(layer, micro_batch);
  if (in_flight_.count(key) != 0)
    fail("layer {}: micro-batch {} is already with the expert shards", layer, micro_batch);
  shard_ranges ranges = ranges_of(layer, counts);
  tensor y = exchange_rows(expert_request::kind::forward, layer, micro_batch, rows, ranges,
                           settings_.combine);
  in_flight_.emplace(key, std::move(ranges));
  return y;
}

void sharded_experts::observe_routing(std::int64_t layer, const std::int32_t* selected,
                                      std::int64_t tokens, std::int64_t k) {
  if (settings_.shard_host.empty()) return;
  const auto& lists = lists_for(layer);
  std::vector<std::int32_t> host_of(static_cast<std::size_t>(experts_), 0);
  for (std::size_t s = 0; s < lists.size(); ++s)
    for (std::int64_t e : lists[s]) host_of[static_cast<std::size_t>(e)] = settings_.shard_host[s];
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::uint64_t hosts = 0;  // NOTES: at most 64 hosts (validation bounds node-limited routing)
    for (std::int64_t i = 0; i < k; ++i)
      hosts |= std::uint64_t{1} << (host_of[static_cast<std::size_t>(selected[t * k + i])] & 63);
    routing_.most_hosts_per_token =
        std::max<std::int64_t>(routing_.most_hosts_per_token, std::popcount(hosts));
    if (settings_.own_host >= 0) hosts &= ~(std::uint64_t{1} << (settings_.own_host & 63));
    routing_.tokens_across_hosts += std::popcount(hosts);
  }
}

tensor sharded_experts::backward_input(std::int64_t layer, std::int64_t micro_batch,
                                       const tensor& dy_rows) {
  auto it = in_flight_.find({layer, micro_batch});
  if (it == in_flight_.end())
    fail("layer {}: micro-batch {} was not sent to the expert shards", layer, micro_batch);
  return exchange_rows(expert_request::kind::backward_input, layer, micro_batch, dy_rows,
                       it->second, settings_.combine);
}

void sharded_experts::notify_all(expert_request::kind what, std::int64_t layer,
                                 std::int64_t micro_batch) {
  std::vector<std::optional<expert_request>> requests(shard_experts_.size());
  for (auto& request : requests) {
    request.emplace();
    request->what = what;
    request->source = settings_.source;
    request->layer = layer;
    request->micro_batch = micro_batch;
  }
  transport_.exchange(requests);
}

void sharded_experts::backward_weight(std::int64_t layer, std::int64_t micro_batch) {
  if (in_flight_.erase({layer, micro_batch}) == 0)
    fail("layer {}: micro-batch {} was not sent to the expert shards", layer, micro_batch);
  notify_all(expert_request::kind::backward_weight, layer, micro_batch);
}

void sharded_experts::forget(std::int64_t layer, std::int64_t micro_batch) {
  if (in_flight_.erase({layer, micro_batch}) == 0) return;
  notify_all(expert_request::kind::forget, layer, micro_batch);
}

void sharded_experts::abandon(std::int64_t layer, std::int64_t micro_batch) {
  in_flight_.erase({layer, micro_batch});
  try {
    notify_all(expert_request::kind::forget, layer, micro_batch);
  } catch (const std::exception&) {
    // Nothing more to do: a shard that cannot be told fails its next request with its own
    // message.
  }
}

}  // namespace troupe
