#pragma once

#include <string>
#include <vector>

#include "runtime/topology/topology.hpp"

namespace troupe {

/// The roles actors play in a job.
enum class actor_role { coordinator, data_loader, stage, expert_shard, balancer, ema };

std::string_view name_of(actor_role role);

/// One actor the job will spawn.
struct planned_actor {
  std::string name;  ///< unique: "coordinator", "data", "stage1", "stage1.r2", "shard0", ...
  actor_role role = actor_role::coordinator;
  placement place;
  int stage = -1;            ///< pipeline stage, for stage actors
  int replica = 0;           ///< data-parallel replica, for stage actors
  std::vector<int> layers;   ///< decoder layers (stages)
  std::vector<int> experts;  ///< routed experts (expert shards)
  bool embedding = false;    ///< holds the embedding (first stage)
  bool head = false;         ///< holds the output head and the MTP modules (last stage)
};

/// A message flow between two actors.
struct planned_link {
  std::string from;
  std::string to;
  std::string carries;  ///< what travels: "activations", "expert counts", ...
};

/// One operating-system process: one per host.
struct planned_process {
  int rank = 0;  ///< rank 0 hosts the coordinator
  std::string host;
  std::string address;
  std::vector<std::string> actors;
};

/// What a validated topology turns into: actors, their links, and the processes they live in.
struct topology_plan {
  std::vector<planned_actor> actors;
  std::vector<planned_link> links;
  std::vector<planned_process> processes;

  const planned_actor* find(const std::string& name) const;
  std::size_t count(actor_role role) const;
};

topology_plan plan_topology(const topology& topo);

/// Graphviz DOT of the plan: one cluster per host (process), one node per actor, one edge per link.
std::string to_dot(const topology& topo, const topology_plan& plan);

/// A few lines describing the topology and its plan (what `troupe topo check` prints).
std::string summarize(const topology& topo, const topology_plan& plan);

}  // namespace troupe
