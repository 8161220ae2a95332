#pragma once

// CAF behind troupe's actor API. For runtime/actor and runtime/cluster only: nothing else
// includes CAF (docs/architecture.md, "Actors and CAF").

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/detail/type_traits.hpp>
#include <caf/error.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/response_promise.hpp>
#include <caf/spawn_options.hpp>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/detail/message_fence.hpp"
#include "runtime/actor/message.hpp"

// Messages travel inside one process as a message_box (shared, never serialized by CAF: between
// processes the cluster's gateways write them with their wire format).
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::message_box)

/// An atom for CAF-level messages (the cluster's own protocol): `name_atom` and `name_atom_v`.
/// CAF 0.17 atoms hold at most 10 characters (caf::atom static_asserts it).
#define TROUPE_ATOM(name)                                       \
  using name##_atom = ::caf::atom_constant<::caf::atom(#name)>; \
  inline constexpr name##_atom name##_atom_v {}

namespace troupe::detail {

/// What an actor_ref holds.
struct actor_cell {
  caf::actor handle;
  /// Ready once the actor's behavior is built (its handlers' message types registered); an
  /// invalid future for actors that need no waiting (proxies, CAF-level actors).
  std::shared_future<void> ready;

  static actor_ref wrap(caf::actor handle, std::shared_future<void> ready = {});
  /// Waits until `actor`'s behavior is built (see `ready`), at most `limit`.
  static void wait_until_ready(const actor_ref& actor, std::chrono::milliseconds limit);
  /// The CAF handle of `ref` (an empty one for an empty ref).
  static caf::actor unwrap(const actor_ref& ref);
};

struct runtime_impl {
  actor_runtime* owner = nullptr;
  std::unique_ptr<caf::actor_system_config> config;
  std::unique_ptr<caf::actor_system> system;

  /// Counts `handle` as spawned (and later exited) under `role`.
  void track(std::string_view role, const caf::actor& handle);
};

inline caf::actor_system& system_of(actor_runtime& runtime) {
  return *runtime.internals().system;
}

/// The runtime that owns `system`, or nullptr.
actor_runtime* runtime_of(const caf::actor_system& system);

/// The CAF actor every event-based troupe actor is: counts the messages it receives by type
/// (troupe_messages_received_total) and tells TSan about each message's hand-off.
class instrumented_actor : public caf::event_based_actor {
 public:
  explicit instrumented_actor(caf::actor_config& config);

  caf::invoke_message_result consume(caf::mailbox_element& element) override;
  /// Runs in the sender's thread: publishes its writes to this actor (message_fence.hpp).
  void enqueue(caf::mailbox_element_ptr element, caf::execution_unit* unit) override;
  using caf::event_based_actor::enqueue;
  /// Runs in the actor's thread as it ends: publishes its writes to the runtime's end.
  void on_exit() override;

  metrics_registry* metrics() const { return metrics_; }

 private:
  metrics_registry* metrics_;
};

/// The label of a received message: the troupe message's name, the atom's text, or the CAF
/// (or demangled) name of the first element.
std::string message_type_label(caf::actor_system& system, const caf::type_erased_tuple& content);

/// The pending answer to the request an instrumented actor is handling.
class reply_slot {
 public:
  explicit reply_slot(instrumented_actor* self);
  /// A request nobody answered fails, so its asker does not wait forever.
  ~reply_slot();
  reply_slot(const reply_slot&) = delete;
  reply_slot& operator=(const reply_slot&) = delete;

  void deliver(message_box reply);
  void fail(const std::string& why);
  bool pending() const { return !answered_; }

 private:
  // The asker first: make_response_promise() moves the current sender into the promise.
  caf::strong_actor_ptr asker_;
  caf::response_promise promise_;
  bool answered_ = false;
};

/// What a blocking_actor (the coordinator, a scoped_actor) talks through.
class blocking_impl {
 public:
  explicit blocking_impl(caf::blocking_actor* actor) : self(actor) {}
  virtual ~blocking_impl() = default;
  caf::blocking_actor* self;
};

inline std::unique_ptr<blocking_impl> make_blocking_impl(caf::blocking_actor* self) {
  return std::make_unique<blocking_impl>(self);
}

/// A failure with troupe's message, as CAF carries it.
inline caf::error actor_failure(const std::string& message) {
  return caf::make_error(caf::sec::runtime_error, message);
}

/// The message of a failure: the failing handler's own text, or what CAF's error means.
std::string describe_failure(caf::actor_system& system, const caf::error& e);

/// The extra spawn argument that keeps CAF 0.17's argument tuple non-empty
/// (actor_runtime.hpp).
struct spawn_marker {};

/// `fun` with a spawn_marker accepted after its self pointer and dropped. The signature stays
/// concrete (no auto parameters) because CAF deduces the actor type from it.
template <class... Ts, class F>
auto accepting_marker(F fun) {
  using arguments = typename caf::detail::get_callable_trait<F>::arg_types;
  using self_pointer = typename caf::detail::tl_head<arguments>::type;
  static_assert(std::is_pointer_v<self_pointer>, "an actor function takes its self pointer first");
  return [fun = std::move(fun)](self_pointer self, spawn_marker, Ts... xs) {
    return fun(self, std::move(xs)...);
  };
}

/// Spawns a CAF actor (the cluster's gateway and proxies) counted under `role`.
template <caf::spawn_options Options = caf::no_spawn_options, class F, class... Ts>
caf::actor spawn_caf(actor_runtime& runtime, std::string_view role, F fun, Ts&&... xs) {
  auto handle =
      system_of(runtime).spawn<Options>(accepting_marker<std::decay_t<Ts>...>(std::move(fun)),
                                        spawn_marker{}, std::forward<Ts>(xs)...);
  runtime.internals().track(role, handle);
  return handle;
}

/// Registers with CAF, before any networked actor system starts, the types that CAF itself
/// carries between processes (the cluster's envelopes). Call at static initialisation.
void add_network_types(std::function<void(caf::actor_system_config&)> registrar);

/// Makes `actor` reachable from other processes on address:port (port 0: a free port); returns
/// the port. Throws troupe::error with CAF's reason.
std::uint16_t publish(actor_runtime& runtime, const caf::actor& actor, const std::string& address,
                      std::uint16_t port);

/// A handle on an actor another process published. Throws troupe::error with CAF's reason.
caf::actor connect(actor_runtime& runtime, const std::string& host, std::uint16_t port);

}  // namespace troupe::detail
