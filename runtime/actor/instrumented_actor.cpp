#include "runtime/actor/instrumented_actor.hpp"

#include <caf/actor_system.hpp>
#include <caf/mailbox_element.hpp>
#include <caf/type_erased_tuple.hpp>
#include <caf/uniform_type_info_map.hpp>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/actor/message_fence.hpp"
#include "runtime/actor/message_types.hpp"

namespace troupe {

instrumented_actor::instrumented_actor(caf::actor_config& config) : caf::event_based_actor(config) {
  auto* runtime = actor_runtime::of(home_system());
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

std::string message_type_label(caf::actor_system& system, const caf::type_erased_tuple& content) {
  if (content.empty()) return "empty";
  if (content.match_element<caf::atom_value>(0))
    return caf::to_string(content.get_as<caf::atom_value>(0));
  const auto rtti = content.type(0);
  if (rtti.second != nullptr) {
    auto name = registered_name(*rtti.second);
    if (!name.empty()) return name;
  }
  const auto& portable = system.types().portable_name(rtti);
  if (portable != system.types().default_type_name()) return portable;
  return rtti.second != nullptr ? display_name(*rtti.second) : std::string("unknown");
}

}  // namespace troupe
