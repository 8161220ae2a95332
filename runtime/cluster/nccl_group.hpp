#pragma once

// One NCCL communicator per process group a job needs (the expert-parallel ranks, a pipeline
// rank and its neighbour, the data-parallel replicas of a stage), its unique id passed through
// the job's rendezvous: the group's first member makes the id and publishes it over CAF
// (cluster::publish), the other members fetch it from there (cluster::fetch). NCCL's own
// bootstrap then connects the members; nothing but the id's 128 bytes goes through CAF.
//
//   auto ep = join_nccl_group(job, "experts", {0, 1, 2, 3}, /*ordinal=*/local_gpu, 10s);
//   nccl_expert_exchange exchange(*ep, local_gpu, layout);

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "runtime/cluster/cluster.hpp"
#include "runtime/transport/nccl_communicator.hpp"

namespace troupe {

/// Joins group `name` (once per job) of the job ranks `members` (ascending, this rank among them)
/// on cuda:`ordinal`; the communicator's ranks follow `members`' order. Throws troupe::error naming
/// the group when this rank is not a member, the id does not come within `deadline`, or NCCL
/// fails (a member missing: within `deadline` of the id).
std::unique_ptr<nccl_communicator> join_nccl_group(cluster& job, const std::string& name,
                                                   const std::vector<int>& members, int ordinal,
                                                   std::chrono::milliseconds deadline);

}  // namespace troupe
