#include "runtime/actor/blocking_actor.hpp"

#include <fmt/format.h>
#include <caf/blocking_actor.hpp>
#include <caf/scoped_actor.hpp>

#include "runtime/actor/detail/caf_actor.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

namespace {

caf::duration caf_deadline(time_limit limit) {
  return limit == no_time_limit ? caf::duration(caf::infinite) : caf::duration(limit);
}

std::string failure_text(caf::blocking_actor* self, const caf::error& e, time_limit limit) {
  if (e == caf::sec::request_timeout)
    return fmt::format("no answer within {:g} s", static_cast<double>(limit.count()) / 1000.0);
  return detail::describe_failure(self->system(), e);
}

/// A request answered in time leaves its timeout in the clock, which would later land in the
/// blocking actor's mailbox and stay there (CAF 0.17 never cancels it): cancel it.
template <class Handle>
void forget_timeout(caf::blocking_actor* self, const Handle& handle, time_limit limit) {
  if (limit != no_time_limit) self->clock().cancel_request_timeout(self, handle.id());
}

void count_sent(caf::blocking_actor* self, const message_box& message) {
  if (auto* runtime = detail::runtime_of(self->system()))
    runtime->metrics().message_sent(message.type()->name);
}

/// A scoped_actor's CAF actor, owned by the thread that made it.
class scoped_impl final : public detail::blocking_impl {
 public:
  explicit scoped_impl(caf::actor_system& system) : blocking_impl(nullptr), scoped_(system) {
    self = scoped_.ptr();
  }

 private:
  caf::scoped_actor scoped_;
};

}  // namespace

message_box blocking_actor::ask_box(const actor_ref& to, message_box message,
                                    const std::string& what, time_limit limit) {
  caf::blocking_actor* self = impl_->self;
  count_sent(self, message);
  message_box reply;
  std::string failure;
  auto handle =
      self->request(detail::actor_cell::unwrap(to), caf_deadline(limit), std::move(message));
  handle.receive([&](message_box& answer) { reply = std::move(answer); },
                 [&](caf::error& e) { failure = failure_text(self, e, limit); });
  forget_timeout(self, handle, limit);
  observe_writes(self);
  if (!failure.empty()) throw error(fmt::format("{}: {}", what, failure));
  return reply;
}

void blocking_actor::tell_box(const actor_ref& to, message_box message) {
  caf::blocking_actor* self = impl_->self;
  count_sent(self, message);
  self->send(detail::actor_cell::unwrap(to), std::move(message));
}

void blocking_actor::ask_each_box(const std::function<std::string(const std::string&)>& context,
                                  const named_actors& targets, std::vector<message_box> messages,
                                  const std::function<void(std::size_t, message_box&)>& on_reply,
                                  time_limit limit) {
  caf::blocking_actor* self = impl_->self;
  using handle = decltype(self->request(caf::actor{}, caf::infinite, message_box{}));
  std::vector<handle> pending;
  pending.reserve(targets.size());
  for (std::size_t i = 0; i < targets.size(); ++i) {
    count_sent(self, messages[i]);
    pending.push_back(self->request(detail::actor_cell::unwrap(targets[i].second),
                                    caf_deadline(limit), std::move(messages[i])));
  }
  for (std::size_t i = 0; i < pending.size(); ++i) {
    std::string failure;
    pending[i].receive(
        [&](message_box& reply) {
          observe_writes(self);
          on_reply(i, reply);
        },
        [&](caf::error& e) { failure = failure_text(self, e, limit); });
    forget_timeout(self, pending[i], limit);
    if (!failure.empty()) {
      // Under a time limit the others' replies come, or fail, in time: take them, or they would
      // stay in the mailbox. Without one, waiting for them could wait for ever (a peer of the
      // one that failed may wait for it): the failure goes up at once.
      if (limit != no_time_limit) {
        for (std::size_t j = i + 1; j < pending.size(); ++j) {
          pending[j].receive([](message_box&) {}, [](caf::error&) {});
          forget_timeout(self, pending[j], limit);
        }
        observe_writes(self);
      }
      throw error(fmt::format("{}: {}", context(targets[i].first), failure));
    }
  }
}

scoped_actor::scoped_actor(actor_runtime& runtime)
    : blocking_actor(nullptr), owned_(std::make_unique<scoped_impl>(detail::system_of(runtime))) {
  reset(owned_.get());
}

scoped_actor::~scoped_actor() = default;

}  // namespace troupe
