#pragma once

// ThreadSanitizer and CAF. Debian's CAF is not built with TSan, so TSan cannot see that a message
// orders the sender's writes before the receiver's reads (CAF's mailboxes are lock-free code TSan
// never instrumented), and it would report every tensor one actor fills and another reads after a
// message. These calls tell TSan about each hand-off, per receiving actor: the sender publishes
// its writes to the receiver before the message is enqueued (instrumented_actor::enqueue does
// it for messages to troupe's event-based actors; every reply publishes to its asker first), and
// the receiver observes what was published to it when a message arrives
// (instrumented_actor::consume; blocking actors after each receive). All of it happens inside
// runtime/actor: roles never call these. A race between actors that exchange no message is still
// reported. Without TSan these are empty.

#include <caf/fwd.hpp>

namespace troupe {

/// Everything this thread wrote so far happens before what `receiver` does after its next
/// observe_writes.
void publish_writes_to(const caf::actor_control_block* receiver);
void publish_writes_to(const caf::strong_actor_ptr& receiver);
/// Everything this thread wrote happens before what follows observe_exits(system): an actor
/// calls it as it ends, the runtime after it awaited every actor (a detached actor's thread is
/// not joined, and CAF's count of running actors is invisible to TSan).
void publish_exit(const caf::actor_system* system);
void observe_exits(const caf::actor_system* system);
/// Takes in what was published to `self`.
void observe_writes(const caf::actor_control_block* self);
void observe_writes(const caf::abstract_actor* self);

}  // namespace troupe
