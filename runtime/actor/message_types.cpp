#include "runtime/actor/message_types.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <typeindex>

#include "runtime/actor/messages.hpp"
#include "runtime/cluster/envelope.hpp"

namespace troupe {

namespace {

struct type_table {
  std::mutex mutex;
  std::map<std::type_index, std::string> names;
};

type_table& table() {
  static type_table instance;
  return instance;
}

}  // namespace

void detail::record_message_type(const std::type_info& type, const std::string& name) {
  auto& t = table();
  std::lock_guard lock(t.mutex);
  t.names[std::type_index(type)] = name;
}

std::string registered_name(const std::type_info& type) {
  auto& t = table();
  std::lock_guard lock(t.mutex);
  auto it = t.names.find(std::type_index(type));
  return it == t.names.end() ? std::string() : it->second;
}

std::string display_name(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && demangled ? std::string(demangled.get()) : std::string(type.name());
}

void register_message_types(caf::actor_system_config& config) {
  add_message_type<tensor_message>(config, "troupe.tensor_message");
  add_message_type<envelope>(config, "troupe.envelope");
  add_message_type<process_card>(config, "troupe.process_card");
  add_message_type<std::vector<process_card>>(config, "troupe.process_cards");
}

}  // namespace troupe
