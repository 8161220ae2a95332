#include <caf/actor_system.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/type_erased_tuple.hpp>
#include <caf/uniform_type_info_map.hpp>

#include <cxxabi.h>

#include <cstdlib>

#include "runtime/actor/detail/caf_actor.hpp"

namespace troupe::detail {

namespace {

std::string demangled(const std::type_info& type) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free);
  return status == 0 && name ? std::string(name.get()) : std::string(type.name());
}

}  // namespace

instrumented_actor::instrumented_actor(caf::actor_config& config) : caf::event_based_actor(config) {
  auto* runtime = runtime_of(home_system());
  metrics_ = runtime != nullptr ? &runtime->metrics() : nullptr;
}

void instrumented_actor::enqueue(caf::mailbox_element_ptr element, caf::execution_unit* unit) {
  publish_writes_to(caf::actor_control_block::from(this));
  caf::event_based_actor::enqueue(std::move(element), unit);
}

caf::invoke_message_result instrumented_actor::consume(caf::mailbox_element& element) {
  observe_writes(static_cast<const caf::abstract_actor*>(this));
  if (metrics_ != nullptr)
    metrics_->message_received(message_type_label(home_system(), element.content()));
  auto result = caf::event_based_actor::consume(element);
  // The actor's next message may run on another scheduler thread.
  publish_writes_to(caf::actor_control_block::from(this));
  return result;
}

void instrumented_actor::on_exit() {
  caf::event_based_actor::on_exit();
  publish_exit(&home_system());
}

std::string message_type_label(caf::actor_system& system, const caf::type_erased_tuple& content) {
  if (content.empty()) return "empty";
  if (content.match_element<message_box>(0)) {
    const auto* box = static_cast<const message_box*>(content.get(0));
    return box->type() != nullptr ? std::string(box->type()->name) : "empty";
  }
  if (content.match_element<caf::atom_value>(0))
    return caf::to_string(content.get_as<caf::atom_value>(0));
  const auto rtti = content.type(0);
  const auto& portable = system.types().portable_name(rtti);
  if (portable != system.types().default_type_name()) return portable;
  return rtti.second != nullptr ? demangled(*rtti.second) : std::string("unknown");
}

reply_slot::reply_slot(instrumented_actor* self)
    : asker_(self->current_sender()), promise_(self->make_response_promise()) {}

reply_slot::~reply_slot() {
  if (!answered_) fail("the actor dropped the request without an answer");
}

void reply_slot::deliver(message_box reply) {
  if (answered_) return;
  answered_ = true;
  publish_writes_to(asker_);
  promise_.deliver(std::move(reply));
}

void reply_slot::fail(const std::string& why) {
  if (answered_) return;
  answered_ = true;
  publish_writes_to(asker_);
  promise_.deliver(actor_failure(why));
}

std::string describe_failure(caf::actor_system& system, const caf::error& e) {
  const caf::message& context = e.context();
  if (context.match_elements<std::string>()) return context.get_as<std::string>(0);
  if (e == caf::sec::request_receiver_down)
    return "the actor is no longer running (it stopped, or its process is gone)";
  if (e == caf::sec::request_timeout) return "no answer before the deadline";
  return system.render(e);
}

void deliver_reply(reply_slot& slot, message_box reply) {
  slot.deliver(std::move(reply));
}

void fail_reply(reply_slot& slot, const std::string& why) {
  slot.fail(why);
}

bool reply_pending(const reply_slot& slot) {
  return slot.pending();
}

}  // namespace troupe::detail
