#include "runtime/actor/messages.hpp"

#include <fmt/format.h>

namespace troupe {

std::string remote_payload_problem(const tensor_message& message) {
  const tensor& t = message.value;
  if (!t.defined()) return "";
  if (t.where().is_cuda())
    return fmt::format("{} is in GPU memory: GPU tensors travel over NCCL, not in actor messages",
                       t.describe());
  if (t.nbytes() > tensor_message::inline_limit)
    return fmt::format(
        "{} is {} bytes, more than the {} bytes an actor message carries between processes; "
        "send it over the data plane (UCX) and pass its descriptor",
        t.describe(), t.nbytes(), tensor_message::inline_limit);
  return "";
}

}  // namespace troupe
