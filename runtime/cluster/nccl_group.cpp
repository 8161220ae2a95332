#include "runtime/cluster/nccl_group.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/core/error.hpp"

namespace troupe {

std::unique_ptr<nccl_communicator> join_nccl_group(cluster& job, const std::string& name,
                                                   const std::vector<int>& members, int ordinal,
                                                   std::chrono::milliseconds deadline) {
  if (members.empty() || !std::is_sorted(members.begin(), members.end()) ||
      std::adjacent_find(members.begin(), members.end()) != members.end())
    fail("NCCL group '{}': members [{}] must be distinct job ranks in ascending order", name,
         fmt::join(members, ", "));
  const auto me = std::find(members.begin(), members.end(), job.rank());
  if (me == members.end())
    fail("NCCL group '{}': rank {} is not among its members [{}]", name, job.rank(),
         fmt::join(members, ", "));
  const std::string key = "nccl-id:" + name;
  std::vector<std::uint8_t> id;
  if (me == members.begin()) {
    // NOTES: a name used twice would let a late member fetch the first group's id and wait in
    // NCCL's join until its deadline; the first member can tell, and says so.
    if (job.has_published(key))
      fail("NCCL group '{}' was joined before in this job: a group's name is used once", name);
    id = nccl_communicator::make_id();
    job.publish(key, id);
  } else {
    id = job.fetch(key, members.front(), deadline);
  }
  try {
    return std::make_unique<nccl_communicator>(id, static_cast<int>(members.size()),
                                               static_cast<int>(me - members.begin()), ordinal,
                                               deadline);
  } catch (const error& e) {
    fail("NCCL group '{}' (job ranks [{}]) on rank {}: {}", name, fmt::join(members, ", "),
         job.rank(), e.what());
  }
}

}  // namespace troupe
