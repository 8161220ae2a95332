#include "runtime/train/plugin_swap_handlers.hpp"

#include <memory>

#include <caf/all.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/train/train_messages.hpp"

namespace troupe {

caf::message_handler plugin_swap_handlers(
    instrumented_actor* self, std::function<std::vector<instance_slot>(plugin_kind)> slots_of) {
  auto pending = std::make_shared<std::unique_ptr<instance_swap>>();
  return {
      [self, pending, slots_of](atoms::swap_atom,
                                const plugin_swap_order& order) -> caf::result<std::int64_t> {
        try {
          pending->reset();
          *pending = std::make_unique<instance_swap>(slots_of(order.kind), order.library);
          return replying(self, static_cast<std::int64_t>((*pending)->size()));
        } catch (const std::exception& e) {
          return actor_failure(e);
        }
      },
      [self, pending](atoms::commit_atom) -> caf::result<bool> {
        if (!*pending) return actor_failure("commit without a prepared swap");
        (*pending)->commit();
        pending->reset();
        return replying(self, true);
      },
      [self, pending](atoms::abort_atom) {
        pending->reset();
        return replying(self, true);
      },
  };
}

}  // namespace troupe
