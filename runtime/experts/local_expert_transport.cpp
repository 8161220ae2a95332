#include "runtime/core/error.hpp"
#include "runtime/experts/expert_shard.hpp"
#include "runtime/experts/expert_transport.hpp"

namespace troupe {

std::vector<expert_reply> local_expert_transport::exchange(
    const std::vector<std::optional<expert_request>>& requests) {
  if (requests.size() != shards_.size())
    fail("{} expert requests for {} shards", requests.size(), shards_.size());
  std::vector<expert_reply> replies(requests.size());
  for (std::size_t s = 0; s < requests.size(); ++s)
    if (requests[s]) replies[s] = shards_[s]->handle(context_, *requests[s]);
  return replies;
}

}  // namespace troupe
