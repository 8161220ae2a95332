#include "runtime/train/expert_rebalance.hpp"

#include <chrono>
#include <stdexcept>

#include "runtime/core/error.hpp"
#include "runtime/experts/expert_messages.hpp"

namespace troupe {

namespace {

std::int64_t bytes_of(const named_tensor_list& tensors) {
  std::int64_t bytes = 0;
  for (const auto& [name, t] : tensors) bytes += static_cast<std::int64_t>(t.nbytes());
  return bytes;
}

}  // namespace

rebalance_report move_experts(blocking_actor& self, training_roles& roles,
                              const expert_placement& target) {
  const auto start = std::chrono::steady_clock::now();
  rebalance_report report;
  const auto moves = moves_between(roles.placement, target);
  report.moved = static_cast<std::int64_t>(moves.size());
  if (moves.empty()) return report;
  const auto shard_count = static_cast<std::int64_t>(roles.shards.size());
  if (target.shards() != shard_count)
    fail("rebalance: the placement has {} shards, the job {}", target.shards(), shard_count);

  // What each shard gives up, and the shards that change at all.
  std::vector<std::vector<std::pair<std::int64_t, std::int64_t>>> leaving(roles.shards.size());
  std::vector<bool> changes(roles.shards.size(), false);
  for (const auto& m : moves) {
    leaving[static_cast<std::size_t>(m.from)].emplace_back(m.layer, m.expert);
    changes[static_cast<std::size_t>(m.from)] = changes[static_cast<std::size_t>(m.to)] = true;
  }
  named_actors giving, changing;
  std::map<std::string, std::int64_t> index;
  for (std::size_t s = 0; s < roles.shards.size(); ++s) {
    index[roles.shards[s].name] = static_cast<std::int64_t>(s);
    if (!leaving[s].empty()) giving.emplace_back(roles.shards[s].name, roles.shards[s].actor);
    if (changes[s]) changing.emplace_back(roles.shards[s].name, roles.shards[s].actor);
  }

  // 1. The handovers: weights and moments of every expert that leaves its shard.
  std::vector<expert_placement_order> orders(roles.shards.size());
  std::map<std::string, std::int64_t> shard_of_name;  // parameter prefix -> new shard
  for (const auto& m : moves)
    shard_of_name[fmt::format("model.layers.{}.mlp.experts.{}.", m.layer, m.expert)] = m.to;
  auto destination = [&](const std::string& name) {
    // "model.layers.L.mlp.experts.E.<rest>": the prefix up to the expert's index.
    auto it = shard_of_name.upper_bound(name);
    if (it == shard_of_name.begin()) fail("rebalance: '{}' belongs to no moved expert", name);
    --it;
    if (name.compare(0, it->first.size(), it->first) != 0)
      fail("rebalance: '{}' belongs to no moved expert", name);
    return static_cast<std::size_t>(it->second);
  };
  self.ask_each(
      "expert handover", giving,
      [&](const std::string& name) {
        return expert_handover_request{leaving[static_cast<std::size_t>(index.at(name))]};
      },
      [&](const std::string&, expert_handover& handover) {
        report.bytes += bytes_of(handover.values) + bytes_of(handover.moments);
        for (auto& entry : handover.values)
          orders[destination(entry.first)].values.push_back(std::move(entry));
        for (auto& entry : handover.moments)
          orders[destination(entry.first)].moments.push_back(std::move(entry));
      });

  // 2. Every changing shard builds its new set beside the old one; 3. all commit, or none.
  for (std::size_t s = 0; s < roles.shards.size(); ++s)
    orders[s].experts = target.of_shard(static_cast<std::int64_t>(s));
  try {
    self.ask_each(
        "expert placement", changing,
        [&](const std::string& name) {
          return std::move(orders[static_cast<std::size_t>(index.at(name))]);
        },
        [](const std::string&, bool&) {});
  } catch (const std::exception&) {
    self.ask_each(
        "expert placement abort", changing,
        [](const std::string&) { return expert_placement_commit{false}; },
        [](const std::string&, bool&) {});
    throw;
  }
  // NOTES: from the first commit on there is no way back: a shard or stage that fails now
  // leaves shards and stages on different placements, so the job must stop (it resumes from its
  // last checkpoint). A std::runtime_error, not a troupe::error, goes past the control command's
  // "refused, nothing changed" and fails the job.
  try {
    self.ask_each(
        "expert placement commit", changing,
        [](const std::string&) { return expert_placement_commit{true}; },
        [](const std::string&, bool&) {});
    self.ask_each(
        "expert routing", roles.stages(),
        [&](const std::string&) { return expert_routing_order{target.layers}; },
        [](const std::string&, bool&) {});
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format(
        "rebalance: the move failed after the shards began to commit, so shards and stages may "
        "disagree on where experts are; the job stops: {}",
        e.what()));
  }
  roles.placement = target;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace troupe
