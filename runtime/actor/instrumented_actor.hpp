#pragma once

#include <caf/event_based_actor.hpp>

namespace troupe {

class metrics_registry;

/// The event-based actor every troupe actor is: a CAF event_based_actor that counts the messages
/// it receives by type (troupe_messages_received_total). Function-based actors take an
/// `instrumented_actor* self` as first parameter; stateful ones use
/// caf::stateful_actor<State, instrumented_actor>.
class instrumented_actor : public caf::event_based_actor {
 public:
  explicit instrumented_actor(caf::actor_config& config);

  caf::invoke_message_result consume(caf::mailbox_element& element) override;
  /// Runs in the sender's thread: publishes its writes to this actor (message_fence.hpp).
  void enqueue(caf::mailbox_element_ptr element, caf::execution_unit* unit) override;
  using caf::event_based_actor::enqueue;

 private:
  metrics_registry* metrics_;
};

/// The message-type label of a received message: the atom's text when it starts with an atom,
/// else the registered (or CAF built-in, or demangled) name of its first element.
std::string message_type_label(caf::actor_system& system, const caf::type_erased_tuple& content);

}  // namespace troupe
