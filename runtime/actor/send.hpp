#pragma once

#include <string>
#include <type_traits>
#include <typeinfo>

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/type_nr.hpp>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/message_types.hpp"
#include "runtime/actor/messages.hpp"
#include "runtime/core/error.hpp"

namespace troupe {

/// A message was about to leave the process with a type CAF would not serialize (never
/// registered) or a payload that must not travel through CAF. Nothing was sent.
class unregistered_message_error : public error {
 public:
  using error::error;
};

namespace detail {

template <class T>
struct is_atom_constant : std::false_type {};
template <caf::atom_value V>
struct is_atom_constant<caf::atom_constant<V>> : std::true_type {};

/// Types CAF can serialize without registration: its built-in types and atoms.
template <class T>
constexpr bool is_builtin_message_type() {
  return is_atom_constant<T>::value || caf::type_nr<T>::value != 0;
}

template <class T>
void check_remote_element(const T& value, const std::string& destination) {
  if constexpr (!is_builtin_message_type<T>()) {
    if (registered_name(typeid(T)).empty())
      throw unregistered_message_error(fmt::format(
          "refusing to send a message of type '{}' to {} in another process: the type is not "
          "registered with "
          "add_message_type, and CAF would deliver it as an empty message. Register it in "
          "runtime/actor/message_types.cpp.",
          display_name(typeid(T)), destination));
  }
  if constexpr (std::is_same_v<T, tensor_message>) {
    if (auto problem = remote_payload_problem(value); !problem.empty())
      throw unregistered_message_error(fmt::format(
          "refusing to send a tensor message to {} in another process: {}", destination, problem));
  }
}

template <class T>
std::string element_label() {
  if constexpr (is_atom_constant<T>::value) {
    return caf::to_string(T::value);
  } else {
    auto name = registered_name(typeid(T));
    return name.empty() ? display_name(typeid(T)) : name;
  }
}

}  // namespace detail

/// Sends a message the troupe way: counted in troupe_messages_sent_total, and when `destination`
/// lives in another process, checked first. A type that was never registered, or a tensor too
/// big or on a GPU for a control message, throws unregistered_message_error and sends nothing.
template <class Self, class Handle, class T, class... Ts>
void send(Self* self, const Handle& destination, T&& first, Ts&&... rest) {
  if (destination && destination.node() != self->home_system().node()) {
    const std::string where = caf::to_string(destination.address());
    detail::check_remote_element<std::decay_t<T>>(first, where);
    (detail::check_remote_element<std::decay_t<Ts>>(rest, where), ...);
  }
  if (auto* runtime = actor_runtime::of(self->home_system()))
    runtime->metrics().message_sent(detail::element_label<std::decay_t<T>>());
  self->send(destination, std::forward<T>(first), std::forward<Ts>(rest)...);
}

}  // namespace troupe
