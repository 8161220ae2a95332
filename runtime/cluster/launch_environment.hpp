#pragma once

// Where a process of a multi-process job learns its rank, the world size and the rendezvous
// address: the environment its launcher set. troupe reads its own variables (set by
// `troupe launch` on one machine, or by hand), then torchrun's, Open MPI's, Slurm's and a
// Kubernetes LeaderWorkerSet's, in that order.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace troupe {

inline constexpr std::uint16_t default_rendezvous_port = 29400;

struct launch_environment {
  std::string launcher;  ///< "troupe", "torchrun", "openmpi", "slurm" or "lws"
  int rank = 0;
  int world = 1;
  /// Empty when the launcher gives none (Open MPI): the caller falls back to the topology.
  std::string rendezvous_host;
  std::uint16_t rendezvous_port = default_rendezvous_port;
};

using environment_lookup = std::function<const char*(const char*)>;

/// The launcher's rank, world size and rendezvous, or nothing when no launcher set a rank.
/// Throws troupe::error naming the variable when a value is malformed.
std::optional<launch_environment> detect_launch_environment(const environment_lookup& lookup);

/// Slurm's compressed node list ("node[01-03,7],gpu5") as host names, in order. Throws
/// troupe::error for a malformed list.
std::vector<std::string> expand_slurm_nodelist(const std::string& list);

/// "HOST:PORT" split; throws troupe::error naming `what` when malformed.
std::pair<std::string, std::uint16_t> parse_host_port(const std::string& text,
                                                      const std::string& what);

}  // namespace troupe
