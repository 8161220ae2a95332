#include "runtime/cluster/message_codec.hpp"

namespace troupe {

void message_codec::add(shape s) {
  for (const auto& existing : shapes_)
    if (existing.name == s.name) fail("message codec: two shapes named '{}'", s.name);
  shapes_.push_back(std::move(s));
}

const message_codec::shape* message_codec::find(const caf::message& message) const {
  for (const auto& s : shapes_)
    if (!s.reply && s.matches(message)) return &s;
  return nullptr;
}

const message_codec::shape* message_codec::find(const std::string& name) const {
  for (const auto& s : shapes_)
    if (s.name == name) return &s;
  return nullptr;
}

const message_codec::shape* message_codec::reply_of(const std::string& request) const {
  auto it = reply_names_.find(request);
  return it == reply_names_.end() ? nullptr : find(it->second);
}

}  // namespace troupe
