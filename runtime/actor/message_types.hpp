#pragma once

#include <string>
#include <string_view>
#include <typeinfo>

#include <caf/actor_system_config.hpp>

namespace troupe {

/// Registers a message type that may cross processes, both with CAF (add_message_type, under
/// `name`) and with troupe's table that send() consults. Call before the actor system starts.
template <class T>
void add_message_type(caf::actor_system_config& config, const std::string& name);

/// Registers every troupe message type (messages.hpp). actor_runtime calls it.
void register_message_types(caf::actor_system_config& config);

/// The registered name of `type`, or "" when it was never registered.
std::string registered_name(const std::type_info& type);

/// A readable (demangled) name of any type.
std::string display_name(const std::type_info& type);

namespace detail {
void record_message_type(const std::type_info& type, const std::string& name);
}

template <class T>
void add_message_type(caf::actor_system_config& config, const std::string& name) {
  config.add_message_type<T>(name);
  detail::record_message_type(typeid(T), name);
}

}  // namespace troupe
