#pragma once

// troupe's actor layer. Every moving part of a job is an actor; roles and the coordinator use
// this small API (actor_ref, typed messages, behavior, blocking_actor) and never CAF itself,
// which lives behind it in runtime/actor (and in runtime/cluster, which carries messages between
// processes). CAF 0.17.6's quirks are handled here and nowhere else:
//  - atoms hold at most 10 characters, and a type that crosses processes must be registered
//    with add_message_type or CAF sends it as an empty message: troupe messages are structs
//    that declare their own name and wire format (message.hpp), carried in one CAF type, and
//    the cluster's gateways write and read them; CAF never serializes them;
//  - actors that block (UCX progress, CUDA, NCCL, a stage waiting for its experts) must run on
//    a thread of their own (actor_thread::own, spawn_blocking), or they stall CAF's scheduler;
//  - CAF's middleman must be loaded before the system starts to talk to other processes
//    (actor_runtime_options::network);
//  - spawning a function-based actor with no arguments makes CAF dereference a null pointer to
//    its empty argument tuple (undefined behaviour that UBSan reports): every spawn hands CAF
//    one argument and drops it again;
//  - CAF is not built with ThreadSanitizer: every hand-off a message makes is told to TSan
//    (message_fence.hpp) inside this layer.

#include <functional>
#include <memory>
#include <string_view>

#include "runtime/actor/actor_ref.hpp"
#include "runtime/actor/behavior.hpp"
#include "runtime/actor/blocking_actor.hpp"
#include "runtime/metrics/metrics.hpp"

namespace troupe {

namespace detail {
struct runtime_impl;
}

struct actor_runtime_options {
  /// CAF scheduler threads; 0 means one per core. Compute runs on troupe's own worker pool, so
  /// the scheduler only needs a few threads for message handling.
  int scheduler_threads = 0;
  /// Load CAF's middleman to reach actors in other processes (runtime/cluster).
  bool network = false;
};

/// Where an event-based actor runs its handlers.
enum class actor_thread {
  shared,  ///< CAF's scheduler threads: actors whose handlers never block
  own,     ///< a thread of its own: actors whose handlers block or compute for long
};

/// Owns an actor system set up the troupe way: message handling threads sized, metrics for
/// actors spawned and alive by role and for messages by type.
class actor_runtime {
 public:
  explicit actor_runtime(
      actor_runtime_options options = {},
      std::shared_ptr<metrics_registry> metrics = std::make_shared<metrics_registry>());
  /// Waits for every actor to finish.
  ~actor_runtime();
  actor_runtime(const actor_runtime&) = delete;
  actor_runtime& operator=(const actor_runtime&) = delete;

  metrics_registry& metrics() { return *metrics_; }

  /// Spawns an event-based actor whose behavior `init` builds (in the actor's thread). `role`
  /// labels its metrics ("stage", "expert_shard", ...).
  actor_ref spawn(std::string_view role, std::function<behavior(event_actor&)> init,
                  actor_thread thread = actor_thread::shared);

  /// Spawns an actor that runs `body` on a thread of its own and ends when it returns.
  actor_ref spawn_blocking(std::string_view role, std::function<void(blocking_actor&)> body);

  /// Sends a one-way message from outside any actor (a callback, a setup step).
  template <class T>
  void tell(const actor_ref& to, T message) {
    tell_box(to, message_box::make(std::move(message)));
  }

  /// Asks `actor` to stop (it finishes the message in hand); nothing happens for an empty
  /// handle or an actor that already stopped.
  void stop(const actor_ref& actor);

  /// CAF's system, for runtime/actor and runtime/cluster only (detail/caf_actor.hpp).
  detail::runtime_impl& internals() { return *impl_; }

 private:
  void tell_box(const actor_ref& to, message_box message);

  std::shared_ptr<metrics_registry> metrics_;
  std::unique_ptr<detail::runtime_impl> impl_;
};

}  // namespace troupe
