#include "runtime/experts/local_shard_set.hpp"

#include <map>

#include "runtime/core/error.hpp"

namespace troupe {

local_shard_set::local_shard_set(const model_config& config,
                                 std::shared_ptr<const plugin_library> moe, std::string moe_options,
                                 const expert_placement& placement, const loader& load,
                                 const exec_context& context)
    : config_(config), moe_options_(std::move(moe_options)) {
  for (std::int64_t s = 0; s < placement.shards(); ++s) {
    shards_.push_back(
        std::make_unique<expert_shard>(config_, moe, placement.of_shard(s), 1, moe_options_));
    load(shards_.back()->parameters());
  }
  transport_ = std::make_unique<local_expert_transport>(std::vector<expert_shard*>{}, context);
  use({});
}

void local_shard_set::use(std::vector<std::unique_ptr<expert_shard>> shards) {
  std::vector<expert_shard*> pointers;
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    if (s < shards.size() && shards[s]) shards_[s] = std::move(shards[s]);
    pointers.push_back(shards_[s].get());
  }
  transport_->set_shards(pointers);
}

void local_shard_set::move_to(const expert_placement& target, replacement_report& report) {
  // Every tensor of every shard by name: where a shard's new experts are copied from.
  std::map<std::string, const tensor*> everywhere;
  for (const auto& shard : shards_)
    for (parameter* p : shard->parameters().all()) everywhere.emplace(p->name, &p->value);
  std::vector<std::unique_ptr<expert_shard>> next(shards_.size());
  for (std::size_t s = 0; s < shards_.size(); ++s) {
    const auto experts = target.of_shard(static_cast<std::int64_t>(s));
    if (experts == shards_[s]->layer_experts()) continue;
    next[s] =
        std::make_unique<expert_shard>(config_, shards_[s]->library(), experts, 1, moe_options_);
    for (parameter* p : next[s]->parameters().all()) {
      auto it = everywhere.find(p->name);
      if (it == everywhere.end()) fail("rebalance: no shard holds '{}'", p->name);
      p->value.copy_from(*it->second);
      if (shards_[s]->parameters().find(p->name) == nullptr) {
        report.bytes += static_cast<std::int64_t>(p->value.nbytes());
        if (p->name.ends_with("down_proj.weight")) ++report.copied;
      }
    }
  }
  use(std::move(next));
}

std::int64_t local_shard_set::prepare_swap(const std::shared_ptr<const plugin_library>& library,
                                           const std::string&) {
  std::vector<std::unique_ptr<expert_shard>> next;
  for (const auto& shard : shards_) {
    next.push_back(
        std::make_unique<expert_shard>(config_, library, shard->layer_experts(), 1, moe_options_));
    for (parameter* p : next.back()->parameters().all()) {
      const parameter* from = shard->parameters().find(p->name);
      if (from == nullptr)
        fail("the moe plugin '{}' declares '{}', which the shard's plugin does not", library->name,
             p->name);
      p->value.copy_from(from->value);
    }
  }
  pending_ = std::move(next);
  return static_cast<std::int64_t>(pending_.size());
}

void local_shard_set::commit_swap() {
  if (pending_.empty()) fail("expert shards: a swap commits, but nothing was prepared");
  use(std::move(pending_));
  pending_.clear();
}

void local_shard_set::abort_swap() {
  pending_.clear();
}

}  // namespace troupe
