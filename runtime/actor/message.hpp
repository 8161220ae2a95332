#pragma once

// Typed messages. A message is a plain struct that names itself and its reply in its own
// declaration and lists its fields once, for the wire (wire.hpp):
//
//   /// Coordinator -> pipeline rank: run one step of the plan.
//   struct step_order {
//     TROUPE_REQUEST("run_step", rank_step_report);
//     std::int64_t step = 0;
//     std::vector<micro_batch_input> inputs;
//     auto fields() { return std::tie(step, inputs); }
//   };
//
// That declaration is all a message needs, in one process or across several: its name labels it
// in troupe_messages_{sent,received}_total and identifies it between processes. The first use of
// the type in a process (a handler for it, a send of it) registers it, so that a gateway can
// rebuild it from its name (runtime/cluster): an actor is exposed to other processes only once
// its behavior is built, its handlers' types registered. Two types under one name fail at the
// second one's first use. Replies are messages too (TROUPE_MESSAGE); `bool`, `std::int64_t` and
// `std::string` are built in.
//
// NOTES: registration is lazy on purpose. A header of messages is included by many files; were
// every inclusion to instantiate every message's wire format, the build would pay for it in each.
//
// Within a process a message travels in a message_box: one heap object handed from sender to
// receiver, tensors sharing storage, never copied. Every send makes its own box, so a handler
// may move out of the message it receives.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>

#include "runtime/actor/wire.hpp"

/// Inside a message struct: its name; it has no reply (a one-way message, or a reply itself).
#define TROUPE_MESSAGE(NAME)                             \
  static constexpr std::string_view message_name = NAME; \
  using reply_type = void

/// Inside a request struct: its name and the type of its reply.
#define TROUPE_REQUEST(NAME, REPLY)                      \
  static constexpr std::string_view message_name = NAME; \
  using reply_type = REPLY

namespace troupe {

namespace detail {
template <class>
inline constexpr bool always_false = false;
}

/// The name a message type travels under.
template <class T>
constexpr std::string_view message_name_of() {
  if constexpr (requires { T::message_name; })
    return T::message_name;
  else if constexpr (std::is_same_v<T, bool>)
    return "bool";
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return "int64";
  else if constexpr (std::is_same_v<T, std::string>)
    return "string";
  else
    static_assert(detail::always_false<T>,
                  "declare the message type with TROUPE_MESSAGE or TROUPE_REQUEST (message.hpp)");
}

namespace detail {
template <class T, class = void>
struct reply_type_of {
  using type = void;
};
template <class T>
struct reply_type_of<T, std::void_t<typename T::reply_type>> {
  using type = typename T::reply_type;
};
}  // namespace detail

/// The reply type of a request; void for one-way messages.
template <class T>
using reply_of = typename detail::reply_type_of<T>::type;

/// What an actor that fails a request, or an asker that gets no answer, hands on.
using failure_handler = std::function<void(const std::string& why)>;

/// What the runtime knows of one message type.
struct message_type_info {
  std::string_view name;
  const std::type_info* type = nullptr;
  const message_type_info* reply = nullptr;  ///< null: no reply expected
  void (*write)(wire_writer& writer, void* value) = nullptr;
  std::shared_ptr<void> (*read)(wire_reader& reader) = nullptr;
};

namespace detail {
/// Adds `info` to the table of message types by name. Throws troupe::error when another type
/// has the same name.
const message_type_info& register_message_type(const message_type_info& info);

template <class T>
message_type_info make_message_type_info() {
  message_type_info info;
  info.name = message_name_of<T>();
  info.type = &typeid(T);
  info.write = [](wire_writer& writer, void* value) { writer(*static_cast<T*>(value)); };
  info.read = [](wire_reader& reader) -> std::shared_ptr<void> {
    auto value = std::make_shared<T>();
    reader(*value);
    return value;
  };
  return info;
}
}  // namespace detail

/// The runtime's record of message type T; the first call registers it.
template <class T>
const message_type_info& message_type() {
  static const message_type_info& info = []() -> const message_type_info& {
    message_type_info made = detail::make_message_type_info<T>();
    if constexpr (!std::is_void_v<reply_of<T>>) made.reply = &message_type<reply_of<T>>();
    return detail::register_message_type(made);
  }();
  return info;
}

/// The registered message type called `name`, or null.
const message_type_info* find_message_type(std::string_view name);

/// One message of any declared type, as it travels within a process.
class message_box {
 public:
  message_box() = default;
  message_box(const message_type_info* type, std::shared_ptr<void> value)
      : type_(type), value_(std::move(value)) {}

  template <class T>
  static message_box make(T value) {
    return {&message_type<T>(), std::make_shared<T>(std::move(value))};
  }

  const message_type_info* type() const { return type_; }
  void* data() const { return value_.get(); }
  explicit operator bool() const { return type_ != nullptr; }

  /// The message as T; throws troupe::error when it is another type.
  template <class T>
  T& as() const {
    if (type_ != &message_type<T>()) wrong_type(message_name_of<T>());
    return *static_cast<T*>(value_.get());
  }

 private:
  [[noreturn]] void wrong_type(std::string_view expected) const;

  const message_type_info* type_ = nullptr;
  std::shared_ptr<void> value_;
};

}  // namespace troupe
