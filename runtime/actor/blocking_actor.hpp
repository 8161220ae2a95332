#pragma once

// Actors that wait for answers. The coordinator runs as one (actor_runtime::spawn_blocking); any
// other thread that must wait for actors (a pipeline stage asking the expert shards from inside
// its handler, a test) makes a scoped_actor. Both ask with a deadline: an actor that fails, has
// stopped, or does not answer in time turns into a troupe::error naming it and the cause.
//
//   blocking.ask_each("gradients", holders,
//                     [](const std::string&) { return gradients_request{}; },
//                     [&](const std::string& name, gradient_report& report) { ... });

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/actor/actor_ref.hpp"
#include "runtime/actor/message.hpp"

namespace troupe {

class actor_runtime;

namespace detail {
class blocking_impl;
}

/// How long an ask waits for its answer.
using time_limit = std::chrono::milliseconds;
inline constexpr time_limit no_time_limit = time_limit::max();

/// Actors by name, in the order their replies are taken.
using named_actors = std::vector<std::pair<std::string, actor_ref>>;

class blocking_actor {
 public:
  virtual ~blocking_actor() = default;
  blocking_actor(const blocking_actor&) = delete;
  blocking_actor& operator=(const blocking_actor&) = delete;

  /// Asks `to` and waits for the reply. Throws troupe::error "WHAT: why" when it fails, has
  /// stopped, or does not answer within `limit`.
  template <class T>
  reply_of<T> ask(const actor_ref& to, T message, const std::string& what,
                  time_limit limit = no_time_limit) {
    static_assert(!std::is_void_v<reply_of<T>>, "ask needs a request (TROUPE_REQUEST)");
    message_box reply = ask_box(to, message_box::make(std::move(message)), what, limit);
    return std::move(reply.as<reply_of<T>>());
  }

  /// Sends a one-way message.
  template <class T>
  void tell(const actor_ref& to, T message) {
    tell_box(to, message_box::make(std::move(message)));
  }

  /// Asks each of `targets` its own `message_for(name)`, all at once (they work in parallel),
  /// then takes the replies in target order: `on_reply(name, reply)`. The first failure (or
  /// missing answer after `limit`) throws troupe::error "`context(name)`: why".
  template <class MessageFor, class OnReply>
  void ask_each(const std::function<std::string(const std::string&)>& context,
                const named_actors& targets, MessageFor message_for, OnReply on_reply,
                time_limit limit = no_time_limit) {
    using T = std::decay_t<decltype(message_for(std::string()))>;
    using R = reply_of<T>;
    static_assert(!std::is_void_v<R>, "ask_each needs a request (TROUPE_REQUEST)");
    std::vector<message_box> messages;
    messages.reserve(targets.size());
    for (const auto& [name, actor] : targets)
      messages.push_back(message_box::make(message_for(name)));
    ask_each_box(
        context, targets, std::move(messages),
        [&](std::size_t i, message_box& reply) { on_reply(targets[i].first, reply.as<R>()); },
        limit);
  }

  /// ask_each with failures as "WHAT of NAME: why".
  template <class MessageFor, class OnReply>
  void ask_each(const std::string& what, const named_actors& targets, MessageFor message_for,
                OnReply on_reply, time_limit limit = no_time_limit) {
    ask_each([&what](const std::string& name) { return what + " of " + name; }, targets,
             std::move(message_for), std::move(on_reply), limit);
  }

 protected:
  explicit blocking_actor(detail::blocking_impl* impl) : impl_(impl) {}
  void reset(detail::blocking_impl* impl) { impl_ = impl; }

 private:
  message_box ask_box(const actor_ref& to, message_box message, const std::string& what,
                      time_limit limit);
  void tell_box(const actor_ref& to, message_box message);
  void ask_each_box(const std::function<std::string(const std::string&)>& context,
                    const named_actors& targets, std::vector<message_box> messages,
                    const std::function<void(std::size_t, message_box&)>& on_reply,
                    time_limit limit);

  detail::blocking_impl* impl_;
};

/// A blocking actor owned by the thread that makes it, for a thread that is not an actor (or an
/// event-based actor's handler that must wait: it runs on a thread of its own). Use it only in
/// the thread that made it, and let it go before the actor runtime stops.
class scoped_actor : public blocking_actor {
 public:
  explicit scoped_actor(actor_runtime& runtime);
  ~scoped_actor() override;

 private:
  std::unique_ptr<detail::blocking_impl> owned_;
};

}  // namespace troupe
