#include "runtime/train/actor_expert_transport.hpp"

#include <caf/scoped_actor.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/message_fence.hpp"
#include "runtime/core/error.hpp"
#include "runtime/train/train_messages.hpp"

namespace troupe {

actor_expert_transport::actor_expert_transport(caf::actor_system& system) : system_(system) {}

actor_expert_transport::~actor_expert_transport() = default;

void actor_expert_transport::close() {
  self_.reset();
}

std::vector<expert_reply> actor_expert_transport::exchange(
    const std::vector<std::optional<expert_request>>& requests) {
  if (requests.size() != shards_.size())
    fail("expert transport: {} requests for {} shards", requests.size(), shards_.size());
  if (!self_) self_ = std::make_unique<caf::scoped_actor>(system_);
  auto& self = *self_;
  using handle = decltype(self->request(shards_[0], caf::infinite, std::declval<expert_request>()));
  std::vector<std::pair<std::size_t, handle>> pending;
  for (std::size_t s = 0; s < requests.size(); ++s)
    if (requests[s])
      pending.emplace_back(s, self->request(shards_[s], caf::infinite, *requests[s]));
  std::vector<expert_reply> replies(requests.size());
  std::string failure;
  for (auto& [s, h] : pending)
    h.receive([&, shard = s](expert_reply& reply) { replies[shard] = std::move(reply); },
              [&, shard = s](caf::error& e) {
                if (failure.empty())
                  failure = fmt::format("expert shard {}: {}", shard, describe_failure(system_, e));
              });
  observe_writes(self.ptr());
  if (!failure.empty()) throw error(failure);
  return replies;
}

}  // namespace troupe
