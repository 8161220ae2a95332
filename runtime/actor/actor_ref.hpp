#pragma once

// A handle on an actor. Roles, the coordinator and the cluster pass these around instead of
// CAF's handles, so nothing outside runtime/actor and runtime/cluster sees CAF.

#include <memory>
#include <string>

namespace troupe {

namespace detail {
struct actor_cell;
}

/// A handle on an actor of this process, or on the local stand-in (proxy) of an actor of another
/// process. Copies refer to the same actor; a default-constructed handle refers to none.
class actor_ref {
 public:
  actor_ref() = default;

  explicit operator bool() const { return cell_ != nullptr; }
  /// Whether both refer to the same actor (or both to none).
  friend bool operator==(const actor_ref& a, const actor_ref& b);
  /// "actor 12" (CAF's id), or "no actor": for messages.
  std::string describe() const;

 private:
  friend struct detail::actor_cell;
  explicit actor_ref(std::shared_ptr<const detail::actor_cell> cell) : cell_(std::move(cell)) {}

  std::shared_ptr<const detail::actor_cell> cell_;
};

}  // namespace troupe
