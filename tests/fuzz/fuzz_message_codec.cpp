// libFuzzer target: the body of a message from another process, as a gateway decodes it
// (runtime/actor/wire.hpp through each message type's registered reader). Byte 0 picks one of
// the runtime's message types, byte 1 how many tensors arrived with it (0-3), the rest is the
// body. Anything but troupe::error is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/balancer/balancer_messages.hpp"
#include "runtime/data/data_messages.hpp"
#include "runtime/ema/ema_messages.hpp"
#include "runtime/experts/expert_messages.hpp"
#include "runtime/job/holder_messages.hpp"
#include "runtime/job/hot_swap.hpp"
#include "runtime/stage/stage_messages.hpp"

namespace {

using namespace troupe;

std::vector<const message_type_info*> message_types() {
  return {&message_type<balance_request>(),    &message_type<batch_request>(),
          &message_type<biases_request>(),     &message_type<checkpoint_order>(),
          &message_type<checkpoint_written>(), &message_type<data_batch>(),
          &message_type<ema_snapshot>(),       &message_type<expert_reply>(),
          &message_type<expert_request>(),     &message_type<gradient_report>(),
          &message_type<gradients_request>(),  &message_type<optimizer_order>(),
          &message_type<peer_step_failed>(),   &message_type<process_lost>(),
          &message_type<rank_step_report>(),   &message_type<reduced_gradients>(),
          &message_type<router_biases>(),      &message_type<save_ema>(),
          &message_type<set_router_biases>(),  &message_type<stage_peers>(),
          &message_type<stage_transfer>(),     &message_type<step_order>(),
          &message_type<stop_request>(),       &message_type<prepare_swap>(),
          &message_type<commit_swap>(),        &message_type<abort_swap>()};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::vector<const message_type_info*> types = message_types();
  static const actor_names names{[](const actor_ref&) { return std::string(); },
                                 [](const std::string& name) -> actor_ref {
                                   if (name.size() > 64)
                                     fail("no actor named '{}'", name.substr(0, 64));
                                   return {};
                                 }};
  if (size < 2) return 0;
  const message_type_info& type = *types[data[0] % types.size()];
  std::vector<tensor> tensors;
  for (int i = 0; i < data[1] % 4; ++i) tensors.push_back(tensor::zeros(dtype::f32, {2, 3}));
  const std::vector<std::uint8_t> body(data + 2, data + size);
  try {
    wire_reader reader(body, std::move(tensors), &names);
    (void)type.read(reader);
  } catch (const troupe::error&) {
  }
  return 0;
}
