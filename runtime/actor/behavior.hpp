#pragma once

// What an event-based actor does with its messages. A role builds a behavior from one handler
// per message type and gets an event_actor to talk to others:
//
//   runtime.spawn("balancer", [state](event_actor& self) {
//     return behavior()
//         .on<get_biases>([state](get_biases&) { return router_biases{state->biases()}; })
//         .on<balance>([&self, state](balance& m, reply_promise<router_biases> done) {
//           ... self.ask_each(m.holders, ..., [done](auto&) mutable { done.deliver(...); }, ...);
//         });
//   });
//
// A handler of a request returns the reply, or takes a reply_promise to answer later. A handler
// that throws fails the request: the asker gets a troupe::error with the handler's message (a
// one-way message that fails is logged). Every reply publishes the handler's writes to the asker
// first (message_fence.hpp), so ThreadSanitizer sees the hand-off.

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/actor/actor_ref.hpp"
#include "runtime/actor/message.hpp"

namespace troupe {

class actor_runtime;

namespace detail {
class reply_slot;
class instrumented_actor;
void deliver_reply(reply_slot& slot, message_box reply);
void fail_reply(reply_slot& slot, const std::string& why);
bool reply_pending(const reply_slot& slot);
}  // namespace detail

/// The answer to one request, given later (a handler that first waits for other actors).
/// Copies answer the same request; the first deliver or fail counts, later ones do nothing. A
/// request whose promises all go without an answer fails ("dropped without an answer").
template <class R>
class reply_promise {
 public:
  reply_promise() = default;
  explicit reply_promise(std::shared_ptr<detail::reply_slot> slot) : slot_(std::move(slot)) {}

  void deliver(R value) {
    if (slot_) detail::deliver_reply(*slot_, message_box::make(std::move(value)));
  }
  void fail(const std::string& why) {
    if (slot_) detail::fail_reply(*slot_, why);
  }
  /// Whether the request still waits for its answer.
  bool pending() const { return slot_ && detail::reply_pending(*slot_); }

 private:
  std::shared_ptr<detail::reply_slot> slot_;
};

/// An actor's handlers, one per message type.
class behavior {
 public:
  using handler = std::function<void(message_box&, const std::shared_ptr<detail::reply_slot>&)>;

  /// Handles messages of type T with `f`: `f(T&)` for one-way messages; for requests
  /// `f(T&) -> reply` or `f(T&, reply_promise<reply>)`.
  template <class T, class F>
  behavior& on(F f);

  /// Adds `other`'s handlers (a part several roles share, like the hot-swap handlers).
  behavior& add(const behavior& other) {
    for (const auto& [type, h] : other.handlers_) handlers_[type] = h;
    return *this;
  }

  const std::map<const message_type_info*, handler>& handlers() const { return handlers_; }

 private:
  std::map<const message_type_info*, handler> handlers_;
};

/// An event-based actor as its handlers see it: whom to talk to and how.
class event_actor {
 public:
  explicit event_actor(detail::instrumented_actor* impl) : impl_(impl) {}

  /// Sends a one-way message (or a request whose reply nobody waits for).
  template <class T>
  void tell(const actor_ref& to, T message) {
    tell_box(to, message_box::make(std::move(message)));
  }

  /// Asks `to`; `on_reply` or `on_failure` runs later, in this actor, like a message.
  template <class T>
  void ask(const actor_ref& to, T message, std::function<void(reply_of<T>&)> on_reply,
           failure_handler on_failure) {
    static_assert(!std::is_void_v<reply_of<T>>, "ask needs a request (TROUPE_REQUEST)");
    ask_box(
        to, message_box::make(std::move(message)),
        [on_reply = std::move(on_reply)](message_box& reply) { on_reply(reply.as<reply_of<T>>()); },
        std::move(on_failure));
  }

  /// Asks each of `to` the same (each its own copy) at once; `done` gets the replies in the
  /// order of `to` when all are in, or `on_failure` the first failure instead.
  template <class T>
  void ask_each(const std::vector<actor_ref>& to, const T& message,
                std::function<void(std::vector<reply_of<T>>&)> done, failure_handler on_failure);

  /// This actor's handle.
  actor_ref self() const;
  /// Stops this actor after the current message.
  void quit();

 private:
  void tell_box(const actor_ref& to, message_box message);
  void ask_box(const actor_ref& to, message_box message, std::function<void(message_box&)> on_reply,
               failure_handler on_failure);

  detail::instrumented_actor* impl_;
};

// ---- implementation -----------------------------------------------------------------------

template <class T, class F>
behavior& behavior::on(F f) {
  using R = reply_of<T>;
  const message_type_info* type = &message_type<T>();
  if constexpr (std::is_void_v<R>) {
    static_assert(std::is_invocable_v<F&, T&>, "a one-way handler takes (T&)");
    handlers_[type] = [f = std::move(f)](message_box& box,
                                         const std::shared_ptr<detail::reply_slot>&) mutable {
      f(box.as<T>());
    };
  } else if constexpr (std::is_invocable_v<F&, T&, reply_promise<R>>) {
    handlers_[type] = [f = std::move(f)](message_box& box,
                                         const std::shared_ptr<detail::reply_slot>& slot) mutable {
      reply_promise<R> promise(slot);
      try {
        f(box.as<T>(), promise);
      } catch (const std::exception& e) {
        promise.fail(e.what());
      }
    };
  } else {
    static_assert(std::is_invocable_r_v<R, F&, T&>,
                  "a request handler takes (T&) and returns the reply, or takes (T&, "
                  "reply_promise<reply>)");
    handlers_[type] = [f = std::move(f)](message_box& box,
                                         const std::shared_ptr<detail::reply_slot>& slot) mutable {
      reply_promise<R> promise(slot);
      try {
        promise.deliver(f(box.as<T>()));
      } catch (const std::exception& e) {
        promise.fail(e.what());
      }
    };
  }
  return *this;
}

template <class T>
void event_actor::ask_each(const std::vector<actor_ref>& to, const T& message,
                           std::function<void(std::vector<reply_of<T>>&)> done,
                           failure_handler on_failure) {
  using R = reply_of<T>;
  struct gathering {
    std::vector<R> replies;
    std::size_t remaining = 0;
    bool failed = false;
  };
  auto g = std::make_shared<gathering>();
  g->replies.resize(to.size());
  g->remaining = to.size();
  if (to.empty()) {
    done(g->replies);
    return;
  }
  for (std::size_t i = 0; i < to.size(); ++i)
    ask<T>(
        to[i], message,
        [g, i, done](R& reply) {
          g->replies[i] = std::move(reply);
          if (--g->remaining == 0 && !g->failed) done(g->replies);
        },
        [g, on_failure](const std::string& why) {
          if (g->failed) return;
          g->failed = true;
          on_failure(why);
        });
}

}  // namespace troupe
