#pragma once

// How a stage reaches the expert shards: one request to each shard that has one, the replies
// back in shard order. Implementations send every request before waiting for any reply, so the
// shards work at the same time. local_expert_transport calls shard objects directly (tests,
// tools); the training job's goes through the shard actors.

#include <optional>
#include <vector>

#include "runtime/experts/expert_messages.hpp"

namespace troupe {

class exec_context;
class expert_shard;

class expert_transport {
 public:
  virtual ~expert_transport() = default;
  /// requests[s] goes to shard s; the reply of a shard without a request is empty.
  virtual std::vector<expert_reply> exchange(
      const std::vector<std::optional<expert_request>>& requests) = 0;
};

/// Calls the shards in the caller's thread, one after the other.
class local_expert_transport : public expert_transport {
 public:
  local_expert_transport(std::vector<expert_shard*> shards, const exec_context& context)
      : shards_(std::move(shards)), context_(context) {}
  /// Other shard objects from now on (as many; a re-placement rebuilt some).
  void set_shards(std::vector<expert_shard*> shards) { shards_ = std::move(shards); }
  std::vector<expert_reply> exchange(
      const std::vector<std::optional<expert_request>>& requests) override;

 private:
  std::vector<expert_shard*> shards_;
  const exec_context& context_;
};

}  // namespace troupe
