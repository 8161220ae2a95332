#include "runtime/actor/actor_runtime.hpp"

#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <caf/actor_system.hpp>
#include <caf/blocking_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/send.hpp>

#include "runtime/actor/detail/caf_actor.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

namespace detail {

namespace {

struct runtime_table {
  std::mutex mutex;
  std::map<const caf::actor_system*, actor_runtime*> runtimes;
};

runtime_table& runtimes() {
  static runtime_table table;
  return table;
}

struct network_type_table {
  std::mutex mutex;
  std::vector<std::function<void(caf::actor_system_config&)>> registrars;
};

network_type_table& network_types() {
  static network_type_table table;
  return table;
}

/// Runs `box` through the handler `handlers` has for its type.
void dispatch(instrumented_actor* self, const behavior& handlers, message_box& box,
              const std::string& role) {
  std::shared_ptr<reply_slot> slot;
  if (self->current_message_id().is_request()) slot = std::make_shared<reply_slot>(self);
  const std::string name = box.type() != nullptr ? std::string(box.type()->name) : "empty";
  auto it = handlers.handlers().find(box.type());
  if (it == handlers.handlers().end()) {
    const std::string why = fmt::format("the {} actor does not handle '{}' messages", role, name);
    if (slot)
      slot->fail(why);
    else
      fmt::print(stderr, "troupe: dropped a message: {}\n", why);
    return;
  }
  try {
    it->second(box, slot);
  } catch (const std::exception& e) {
    // Request handlers answer their own failures; this is a one-way message's.
    if (slot)
      slot->fail(e.what());
    else
      fmt::print(stderr, "troupe: the {} actor failed on a '{}' message: {}\n", role, name,
                 e.what());
  }
}

/// The blocking actor a coordinator body gets.
class spawned_blocking final : public blocking_actor {
 public:
  explicit spawned_blocking(blocking_impl* impl) : blocking_actor(impl) {}
};

}  // namespace

void runtime_impl::track(std::string_view role, const caf::actor& handle) {
  auto* metrics = &owner->metrics();
  std::string label(role);
  metrics->actor_spawned(label);
  // The runtime outlives its actors (its destructor waits for them).
  handle->attach_functor([metrics, label](const caf::error&) { metrics->actor_exited(label); });
}

actor_runtime* runtime_of(const caf::actor_system& system) {
  std::lock_guard lock(runtimes().mutex);
  auto it = runtimes().runtimes.find(&system);
  return it == runtimes().runtimes.end() ? nullptr : it->second;
}

actor_ref actor_cell::wrap(caf::actor handle, std::shared_future<void> ready) {
  if (!handle) return actor_ref();
  auto cell = std::make_shared<actor_cell>();
  cell->handle = std::move(handle);
  cell->ready = std::move(ready);
  return actor_ref(std::move(cell));
}

void actor_cell::wait_until_ready(const actor_ref& actor, std::chrono::milliseconds limit) {
  if (actor.cell_ && actor.cell_->ready.valid()) actor.cell_->ready.wait_for(limit);
}

caf::actor actor_cell::unwrap(const actor_ref& ref) {
  return ref.cell_ ? ref.cell_->handle : caf::actor();
}

void add_network_types(std::function<void(caf::actor_system_config&)> registrar) {
  std::lock_guard lock(network_types().mutex);
  network_types().registrars.push_back(std::move(registrar));
}

std::uint16_t publish(actor_runtime& runtime, const caf::actor& actor, const std::string& address,
                      std::uint16_t port) {
  auto& system = system_of(runtime);
  if (!system.has_middleman())
    fail("cannot publish an actor on {}:{}: the actor runtime was started without networking",
         address, port);
  auto result = system.middleman().publish(actor, port, address.c_str(), true);
  if (!result)
    fail("cannot publish an actor on {}:{}: {}", address, port, system.render(result.error()));
  return *result;
}

caf::actor connect(actor_runtime& runtime, const std::string& host, std::uint16_t port) {
  auto& system = system_of(runtime);
  if (!system.has_middleman())
    fail("cannot reach {}:{}: the actor runtime was started without networking", host, port);
  auto result = system.middleman().remote_actor(host, port);
  if (!result)
    fail("cannot reach the actor at {}:{}: {}", host, port, system.render(result.error()));
  return *result;
}

}  // namespace detail

bool operator==(const actor_ref& a, const actor_ref& b) {
  return detail::actor_cell::unwrap(a) == detail::actor_cell::unwrap(b);
}

std::string actor_ref::describe() const {
  const caf::actor handle = detail::actor_cell::unwrap(*this);
  return handle ? fmt::format("actor {}", handle.id()) : std::string("no actor");
}

actor_runtime::actor_runtime(actor_runtime_options options,
                             std::shared_ptr<metrics_registry> metrics)
    : metrics_(std::move(metrics)), impl_(std::make_unique<detail::runtime_impl>()) {
  impl_->owner = this;
  impl_->config = std::make_unique<caf::actor_system_config>();
  const int threads = options.scheduler_threads > 0
                          ? options.scheduler_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl_->config->set("scheduler.max-threads", static_cast<std::size_t>(threads));
  if (options.network) {
    std::lock_guard lock(detail::network_types().mutex);
    for (const auto& registrar : detail::network_types().registrars) registrar(*impl_->config);
    impl_->config->load<caf::io::middleman>();
  }
  impl_->system = std::make_unique<caf::actor_system>(*impl_->config);
  std::lock_guard lock(detail::runtimes().mutex);
  detail::runtimes().runtimes[impl_->system.get()] = this;
}

actor_runtime::~actor_runtime() {
  impl_->system->await_all_actors_done();
  observe_exits(impl_->system.get());
  {
    std::lock_guard lock(detail::runtimes().mutex);
    detail::runtimes().runtimes.erase(impl_->system.get());
  }
  impl_->system.reset();
}

actor_ref actor_runtime::spawn(std::string_view role, std::function<behavior(event_actor&)> init,
                               actor_thread thread) {
  // CAF builds the behavior when the actor first runs, not in spawn: `ready` says when.
  auto built = std::make_shared<std::promise<void>>();
  std::shared_future<void> ready = built->get_future().share();
  auto body = [init = std::move(init), label = std::string(role),
               built](detail::instrumented_actor* self) -> caf::behavior {
    struct signal {
      std::promise<void>& promise;
      ~signal() { promise.set_value(); }
    } done{*built};
    auto me = std::make_shared<event_actor>(self);
    auto handlers = std::make_shared<behavior>(init(*me));
    return caf::behavior{[self, me, handlers, label](message_box& box) {
      detail::dispatch(self, *handlers, box, label);
    }};
  };
  caf::actor handle = thread == actor_thread::own
                          ? detail::spawn_caf<caf::detached>(*this, role, std::move(body))
                          : detail::spawn_caf(*this, role, std::move(body));
  return detail::actor_cell::wrap(std::move(handle), std::move(ready));
}

actor_ref actor_runtime::spawn_blocking(std::string_view role,
                                        std::function<void(blocking_actor&)> body) {
  auto run = [body = std::move(body)](caf::blocking_actor* self) {
    auto impl = detail::make_blocking_impl(self);
    detail::spawned_blocking me(impl.get());
    body(me);
  };
  return detail::actor_cell::wrap(detail::spawn_caf<caf::detached>(*this, role, std::move(run)));
}

void actor_runtime::tell_box(const actor_ref& to, message_box message) {
  metrics_->message_sent(message.type()->name);
  if (const caf::actor handle = detail::actor_cell::unwrap(to))
    caf::anon_send(handle, std::move(message));
}

void actor_runtime::stop(const actor_ref& actor) {
  if (const caf::actor handle = detail::actor_cell::unwrap(actor))
    caf::anon_send_exit(handle, caf::exit_reason::user_shutdown);
}

}  // namespace troupe
