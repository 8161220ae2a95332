#include "runtime/train/plugin_swap_handlers.hpp"

#include <memory>
#include <optional>

#include <caf/all.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/train/train_messages.hpp"

namespace troupe {

caf::message_handler plugin_swap_handlers(
    instrumented_actor* self, std::shared_ptr<process_plugins> plugins,
    std::function<std::vector<instance_slot>(plugin_kind)> slots_of) {
  struct pending_swap {
    plugin_swap_order order;
    std::unique_ptr<instance_swap> instances;  // layer kinds
  };
  auto pending = std::make_shared<std::optional<pending_swap>>();
  return {
      [self, plugins, pending, slots_of](
          atoms::swap_atom, const plugin_swap_order& order) -> caf::result<std::int64_t> {
        try {
          pending->reset();
          if (order.kind == plugin_kind::gemm) {
            const std::int64_t built = plugins->prepare_gemm(order);
            *pending = pending_swap{order, nullptr};
            return replying(self, built);
          }
          auto instances =
              std::make_unique<instance_swap>(slots_of(order.kind), plugins->library_for(order));
          const auto count = static_cast<std::int64_t>(instances->size());
          *pending = pending_swap{order, std::move(instances)};
          return replying(self, count);
        } catch (const std::exception& e) {
          return actor_failure(e);
        }
      },
      [self, plugins, pending](atoms::commit_atom) -> caf::result<bool> {
        if (!*pending) return actor_failure("commit without a prepared swap");
        if ((*pending)->instances)
          (*pending)->instances->commit();
        else
          plugins->commit_gemm((*pending)->order.swap);
        pending->reset();
        return replying(self, true);
      },
      [self, plugins, pending](atoms::abort_atom) {
        if (*pending && !(*pending)->instances) plugins->abort_gemm((*pending)->order.swap);
        pending->reset();
        return replying(self, true);
      },
  };
}

}  // namespace troupe
