#pragma once

// troupe's actor layer over CAF 0.17.6. CAF's 0.17 quirks live here and nowhere else:
//  - atoms hold at most 10 characters: declare them with TROUPE_ATOM in atoms.hpp;
//  - a message type that crosses processes must be registered with add_message_type, or CAF
//    sends it as an empty message without a compile-time error: troupe::add_message_type
//    registers it in CAF and in troupe's table, and troupe::send (send.hpp) throws
//    unregistered_message_error instead of sending such a message to another process;
//  - actors that block (UCX progress, CUDA, NCCL) must run detached (spawn_detached), or they
//    stall CAF's scheduler threads;
//  - CAF's middleman (io module) must be loaded before the system starts to talk to other
//    processes (actor_runtime_options::network);
//  - spawning a function-based actor with no arguments makes CAF dereference a null pointer to
//    its empty argument tuple (undefined behaviour that UBSan reports): spawn and
//    spawn_detached always hand CAF one argument, a spawn_marker, and drop it again.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/detail/type_traits.hpp>
#include <caf/spawn_options.hpp>

#include "runtime/metrics/metrics.hpp"

namespace troupe {

struct actor_runtime_options {
  /// CAF scheduler threads; 0 means one per core. Compute runs on troupe's own worker pool, so
  /// the scheduler only needs a few threads for message handling.
  int scheduler_threads = 0;
  /// Load CAF's middleman to publish actors to and reach actors in other processes.
  bool network = false;
};

namespace detail {

/// The extra spawn argument that keeps CAF 0.17's argument tuple non-empty (see above).
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

}  // namespace detail

/// Owns a CAF actor system set up the troupe way: message types registered, scheduler sized,
/// metrics for spawned and alive actors by role.
class actor_runtime {
 public:
  explicit actor_runtime(
      actor_runtime_options options = {},
      std::shared_ptr<metrics_registry> metrics = std::make_shared<metrics_registry>());
  /// Waits for every actor to finish.
  ~actor_runtime();
  actor_runtime(const actor_runtime&) = delete;
  actor_runtime& operator=(const actor_runtime&) = delete;

  caf::actor_system& system() { return *system_; }
  metrics_registry& metrics() { return *metrics_; }

  /// The runtime that owns `system`, or nullptr.
  static actor_runtime* of(const caf::actor_system& system);

  /// Spawns an event-based actor; `fun` takes an instrumented_actor* (or a stateful actor over
  /// it) first. `role` labels its metrics ("stage", "expert_shard", ...).
  template <class F, class... Ts>
  caf::actor spawn(std::string_view role, F fun, Ts&&... xs) {
    auto handle = system_->spawn(detail::accepting_marker<std::decay_t<Ts>...>(std::move(fun)),
                                 detail::spawn_marker{}, std::forward<Ts>(xs)...);
    track(role, handle);
    return handle;
  }

  /// Spawns an actor on a thread of its own, for actors that block.
  template <class F, class... Ts>
  caf::actor spawn_detached(std::string_view role, F fun, Ts&&... xs) {
    auto handle =
        system_->spawn<caf::detached>(detail::accepting_marker<std::decay_t<Ts>...>(std::move(fun)),
                                      detail::spawn_marker{}, std::forward<Ts>(xs)...);
    track(role, handle);
    return handle;
  }

  /// Makes `actor` reachable from other processes on address:port (port 0: a free port);
  /// returns the port. Throws troupe::error with CAF's reason on failure.
  std::uint16_t publish(const caf::actor& actor, const std::string& address, std::uint16_t port);

  /// A handle on an actor another process published. Throws troupe::error on failure.
  caf::actor connect(const std::string& host, std::uint16_t port);

 private:
  void track(std::string_view role, const caf::actor& handle);

  std::unique_ptr<caf::actor_system_config> config_;
  std::shared_ptr<metrics_registry> metrics_;
  std::unique_ptr<caf::actor_system> system_;
};

}  // namespace troupe
