#include "runtime/actor/message.hpp"

#include <map>
#include <mutex>

namespace troupe {

namespace {

struct type_table {
  std::mutex mutex;
  std::map<std::string_view, std::unique_ptr<message_type_info>> by_name;
};

type_table& types() {
  static type_table table;
  return table;
}

}  // namespace

const message_type_info& detail::register_message_type(const message_type_info& info) {
  auto& table = types();
  std::lock_guard lock(table.mutex);
  auto& entry = table.by_name[info.name];
  if (entry) {
    // The same type from another translation unit or library: the first record stands.
    if (*entry->type == *info.type) return *entry;
    fail("two message types are called '{}': rename one (TROUPE_MESSAGE/TROUPE_REQUEST)",
         info.name);
  }
  entry = std::make_unique<message_type_info>(info);
  return *entry;
}

const message_type_info* find_message_type(std::string_view name) {
  auto& table = types();
  std::lock_guard lock(table.mutex);
  auto it = table.by_name.find(name);
  return it == table.by_name.end() ? nullptr : it->second.get();
}

void message_box::wrong_type(std::string_view expected) const {
  fail("a '{}' message where a '{}' message was expected",
       type_ != nullptr ? type_->name : std::string_view("empty"), expected);
}

}  // namespace troupe
