#pragma once

// Replies and failures between training actors: an actor that cannot do what it was asked answers
// with a CAF error carrying troupe's message, and the asker turns it back into a troupe::error, so
// the user reads the message of the actor that failed (a layer, a file), not CAF's error code.

#include <exception>
#include <string>

#include <caf/actor_system.hpp>
#include <caf/error.hpp>
#include <caf/sec.hpp>

#include "runtime/actor/message_fence.hpp"

namespace troupe {

/// `value` as the reply to the current request, after this handler's writes are published to
/// the asker (message_fence.hpp: the asker may be a blocking actor, which enqueue cannot see).
template <class Self, class T>
T replying(Self* self, T value) {
  publish_writes_to(self->current_sender());
  return value;
}

inline caf::error actor_failure(const std::string& message) {
  return caf::make_error(caf::sec::runtime_error, message);
}

inline caf::error actor_failure(const std::exception& e) {
  return actor_failure(std::string(e.what()));
}

/// The message of an error made by actor_failure, or CAF's rendering of any other.
inline std::string describe_failure(caf::actor_system& system, const caf::error& e) {
  const caf::message& context = e.context();
  if (context.match_elements<std::string>()) return context.get_as<std::string>(0);
  return system.render(e);
}

}  // namespace troupe
