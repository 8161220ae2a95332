#include "runtime/plugin/instance_swap.hpp"

namespace troupe {

instance_swap::instance_swap(const std::vector<instance_slot>& slots,
                             const std::shared_ptr<const plugin_library>& library) {
  successors_.reserve(slots.size());
  for (instance_slot slot : slots) successors_.emplace_back(slot, (*slot)->successor(library));
}

void instance_swap::commit() {
  for (auto& [slot, next] : successors_) *slot = std::move(next);
  successors_.clear();
}

}  // namespace troupe
