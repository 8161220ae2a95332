#include "runtime/experts/actor_expert_transport.hpp"

#include "runtime/core/error.hpp"

namespace troupe {

actor_expert_transport::actor_expert_transport(actor_runtime& runtime, bool actor_per_exchange)
    : runtime_(runtime), actor_per_exchange_(actor_per_exchange) {}

actor_expert_transport::~actor_expert_transport() = default;

void actor_expert_transport::close() {
  self_.reset();
}

std::vector<expert_reply> actor_expert_transport::exchange(
    const std::vector<std::optional<expert_request>>& requests) {
  if (requests.size() != shards_.size())
    fail("expert transport: {} requests for {} shards", requests.size(), shards_.size());
  std::unique_ptr<scoped_actor> own;
  if (actor_per_exchange_)
    own = std::make_unique<scoped_actor>(runtime_);
  else if (!self_)
    self_ = std::make_unique<scoped_actor>(runtime_);
  scoped_actor& self = own ? *own : *self_;
  named_actors asked;
  std::vector<std::size_t> shard_of;
  for (std::size_t s = 0; s < requests.size(); ++s)
    if (requests[s]) {
      asked.emplace_back(std::to_string(s), shards_[s]);
      shard_of.push_back(s);
    }
  std::vector<expert_reply> replies(requests.size());
  std::size_t next = 0;
  self.ask_each([](const std::string& shard) { return "expert shard " + shard; }, asked,
                [&](const std::string& shard) { return *requests[std::stoul(shard)]; },
                [&](const std::string&, expert_reply& reply) {
                  replies[shard_of[next++]] = std::move(reply);
                });
  return replies;
}

}  // namespace troupe
