#include "runtime/experts/expert_move.hpp"

#include <string>

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace troupe {

expert_handover hand_over(expert_shard& shard, const adamw* optimizer,
                          const std::vector<std::pair<std::int64_t, std::int64_t>>& experts) {
  if (!shard.idle())
    fail("expert shard: experts move only between steps, not with micro-batches in flight");
  std::map<std::string, const tensor*> moments;
  const auto state =
      optimizer != nullptr ? optimizer->state() : std::vector<std::pair<std::string, tensor>>{};
  for (const auto& [name, value] : state) moments[name] = &value;
  expert_handover out;
  for (const auto& [layer, expert] : experts) {
    const auto parameters = shard.parameters_of(layer, expert);
    if (parameters.empty())
      fail("expert shard: it does not own expert {} of layer {} and cannot hand it over", expert,
           layer);
    for (const parameter* p : parameters) {
      out.values.emplace_back(p->name, p->value.clone());
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
        auto it = moments.find(p->name + suffix);
        if (it != moments.end()) out.moments.emplace_back(it->first, it->second->clone());
      }
    }
  }
  return out;
}

shard_successor prepare_successor(expert_shard& current, const adamw* optimizer,
                                  const expert_placement_order& order, const shard_factory& build,
                                  adamw_settings settings) {
  shard_successor next;
  next.shard = build(current.library(), order.experts);
  std::map<std::string, const tensor*> values;
  for (parameter* p : current.parameters().all()) values[p->name] = &p->value;
  for (const auto& [name, value] : order.values) values[name] = &value;
  for (parameter* p : next.shard->parameters().all()) {
    auto it = values.find(p->name);
    if (it == values.end())
      fail("rebalance: '{}' was neither on this shard nor handed over to it", p->name);
    if (it->second->shape() != p->value.shape() || it->second->type() != p->value.type())
      fail("rebalance: '{}' arrived as {}, the shard holds it as {}", p->name,
           it->second->describe(), p->value.describe());
    p->value.copy_from(*it->second);
  }
  if (optimizer == nullptr) return next;
  auto moments = optimizer->state();
  moments.insert(moments.end(), order.moments.begin(), order.moments.end());
  next.optimizer = std::make_unique<adamw>(settings);
  next.optimizer->attach(next.shard->parameters());
  next.optimizer->load_state(moments);
  return next;
}

}  // namespace troupe
