#include "runtime/actor/behavior.hpp"

#include <caf/event_based_actor.hpp>

#include "runtime/actor/detail/caf_actor.hpp"

namespace troupe {

namespace {

void count_sent(detail::instrumented_actor* self, const message_box& message) {
  if (self->metrics() != nullptr) self->metrics()->message_sent(message.type()->name);
}

}  // namespace

void event_actor::tell_box(const actor_ref& to, message_box message) {
  count_sent(impl_, message);
  impl_->send(detail::actor_cell::unwrap(to), std::move(message));
}

void event_actor::ask_box(const actor_ref& to, message_box message,
                          std::function<void(message_box&)> on_reply, failure_handler on_failure) {
  count_sent(impl_, message);
  auto* self = impl_;
  self->request(detail::actor_cell::unwrap(to), caf::infinite, std::move(message))
      .then(
          // A callback that throws fails the ask, not the actor.
          [on_reply = std::move(on_reply), on_failure](message_box& reply) {
            try {
              on_reply(reply);
            } catch (const std::exception& e) {
              on_failure(e.what());
            }
          },
          [self, on_failure](caf::error& e) {
            on_failure(detail::describe_failure(self->system(), e));
          });
}

actor_ref event_actor::self() const {
  return detail::actor_cell::wrap(caf::actor_cast<caf::actor>(impl_));
}

void event_actor::quit() {
  impl_->quit();
}

}  // namespace troupe
