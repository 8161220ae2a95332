#include "runtime/experts/remote_shard_set.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include <fmt/format.h>

#include "runtime/core/error.hpp"
#include "runtime/experts/expert_messages.hpp"
#include "runtime/job/hot_swap.hpp"

namespace troupe {

namespace {

/// A swap's number in the shards' processes, which load a library once per number: unique across
/// the serving processes (a random start per process, then counted), so that every prepare loads
/// its library afresh and no process's number meets another's.
std::int64_t next_swap() {
  static std::atomic<std::int64_t> next{[] {
    std::random_device entropy;
    return static_cast<std::int64_t>(((static_cast<std::uint64_t>(entropy()) << 31) ^ entropy()) &
                                     ((1ull << 62) - 1)) +
           1;
  }()};
  return next++;
}

std::string expert_prefix(std::int64_t layer, std::int64_t expert) {
  return fmt::format("model.layers.{}.mlp.experts.{}.", layer, expert);
}

}  // namespace

remote_shard_set::remote_shard_set(actor_runtime& runtime, std::vector<actor_ref> shards,
                                   std::vector<std::string> names, const expert_placement& initial)
    : runtime_(runtime),
      shards_(std::move(shards)),
      names_(std::move(names)),
      placement_(initial),
      transport_(runtime, /*actor_per_exchange=*/true),
      checked_(*this) {
  if (static_cast<std::int64_t>(shards_.size()) != placement_.shards() ||
      names_.size() != shards_.size())
    fail("remote expert shards: {} actors and {} names for {} shards", shards_.size(),
         names_.size(), placement_.shards());
  transport_.set_shards(shards_);
}

remote_shard_set::~remote_shard_set() = default;

std::vector<expert_reply> remote_shard_set::checked_transport::exchange(
    const std::vector<std::optional<expert_request>>& requests) {
  if (!owner.broken_.empty()) fail("{}", owner.broken_);
  return owner.transport_.exchange(requests);
}

std::vector<std::size_t> remote_shard_set::every() const {
  std::vector<std::size_t> all(shards_.size());
  std::iota(all.begin(), all.end(), std::size_t{0});
  return all;
}

named_actors remote_shard_set::named(const std::vector<std::size_t>& which) const {
  named_actors out;
  for (const std::size_t s : which) out.emplace_back(names_[s], shards_[s]);
  return out;
}

void remote_shard_set::move_to(const expert_placement& target, replacement_report& report) {
  const std::size_t count = shards_.size();
  std::vector<std::map<std::int64_t, std::vector<std::int64_t>>> sets(count);
  std::vector<std::size_t> changing;
  // What each changing shard gains, and which shard gives each (layer, expert) up: the first
  // that holds it now.
  std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> gains(count), gives(count);
  for (std::size_t s = 0; s < count; ++s) {
    sets[s] = target.of_shard(static_cast<std::int64_t>(s));
    if (sets[s] == placement_.of_shard(static_cast<std::int64_t>(s))) continue;
    changing.push_back(s);
    for (const auto& [layer, experts] : sets[s]) {
      const auto& now = placement_.layers.at(layer);
      for (const std::int64_t e : experts) {
        if (std::binary_search(now[s].begin(), now[s].end(), e)) continue;
        std::size_t giver = 0;
        while (giver < count && !std::binary_search(now[giver].begin(), now[giver].end(), e))
          ++giver;
        if (giver == count)
          fail("rebalance: no expert shard holds expert {} of layer {}", e, layer);
        gains[s].emplace_back(layer, e);
        auto& list = gives[giver];
        if (std::find(list.begin(), list.end(), std::make_pair(layer, e)) == list.end())
          list.emplace_back(layer, e);
      }
    }
  }
  if (changing.empty()) return;
  scoped_actor self(runtime_);
  std::vector<std::size_t> givers;
  for (std::size_t s = 0; s < count; ++s)
    if (!gives[s].empty()) givers.push_back(s);
  std::map<std::string, tensor> handed;
  std::map<std::string, std::size_t> index;
  for (std::size_t s = 0; s < count; ++s) index[names_[s]] = s;
  self.ask_each(
      "the rebalance's handover", named(givers),
      [&](const std::string& name) { return expert_handover_request{gives[index.at(name)]}; },
      [&](const std::string&, expert_handover& handover) {
        for (auto& [name, value] : handover.values) handed.emplace(name, std::move(value));
      });
  std::vector<expert_placement_order> orders(count);
  for (const std::size_t s : changing) {
    orders[s].experts = sets[s];
    for (const auto& [layer, e] : gains[s]) {
      const std::string prefix = expert_prefix(layer, e);
      for (auto it = handed.lower_bound(prefix);
           it != handed.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
        orders[s].values.emplace_back(it->first, it->second);
        report.bytes += static_cast<std::int64_t>(it->second.nbytes());
      }
      ++report.copied;
    }
  }
  const auto finish = [&](bool commit) {
    self.ask_each(
        commit ? "the rebalance's commit" : "the rebalance's abort", named(changing),
        [commit](const std::string&) { return expert_placement_commit{commit}; },
        [](const std::string&, bool) {});
  };
  try {
    self.ask_each(
        "the rebalance's new experts", named(changing),
        [&](const std::string& name) { return orders[index.at(name)]; },
        [](const std::string&, bool) {});
  } catch (const std::exception&) {
    try {
      finish(false);
    } catch (const std::exception&) {
      // A shard that cannot be told keeps its prepared set aside until the next rebalance.
    }
    throw;
  }
  try {
    finish(true);
  } catch (const std::exception& e) {
    // NOTES: some shards may hold their new experts and others not (a process was lost between
    // the two halves): no routing fits both, so the instance computes no more rows.
    broken_ = fmt::format(
        "the expert re-placement was committed by some shards only ({}): this instance's experts "
        "are inconsistent; restart the server",
        e.what());
    throw error(broken_);
  }
  placement_ = target;
}

std::int64_t remote_shard_set::prepare_swap(const std::shared_ptr<const plugin_library>&,
                                            const std::string& path) {
  plugin_swap_order order;
  order.kind = plugin_kind::moe;
  order.library = path;
  order.swap = next_swap();
  scoped_actor self(runtime_);
  std::int64_t prepared = 0;
  swap_prepared_ = true;  // an abort reaches every shard, whichever prepared
  self.ask_each(
      "the moe swap", named(every()),
      [&](const std::string&) { return troupe::prepare_swap{order}; },
      [&](const std::string&, std::int64_t instances) { prepared += instances > 0 ? 1 : 0; });
  return prepared;
}

void remote_shard_set::commit_swap() {
  if (!swap_prepared_) fail("expert shards: a swap commits, but nothing was prepared");
  swap_prepared_ = false;
  scoped_actor self(runtime_);
  self.ask_each(
      "the moe swap's commit", named(every()),
      [](const std::string&) { return troupe::commit_swap{}; }, [](const std::string&, bool) {});
}

void remote_shard_set::abort_swap() {
  if (!swap_prepared_) return;
  swap_prepared_ = false;
  scoped_actor self(runtime_);
  self.ask_each(
      "the moe swap's abort", named(every()),
      [](const std::string&) { return troupe::abort_swap{}; }, [](const std::string&, bool) {});
}

}  // namespace troupe
