#include "runtime/cluster/launch_environment.hpp"

#include <charconv>

#include "runtime/core/error.hpp"

namespace troupe {

namespace {

long parse_number(const char* text, const std::string& variable, long low, long high) {
  const std::string value = text;
  long number = 0;
  auto [end, problem] = std::from_chars(value.data(), value.data() + value.size(), number);
  if (value.empty() || problem != std::errc() || end != value.data() + value.size() ||
      number < low || number > high)
    fail("{}='{}' is not a number from {} to {}", variable, value, low, high);
  return number;
}

/// `rank_variable` and `world_variable` as a rank in a world, or nothing when unset.
std::optional<launch_environment> rank_and_world(const environment_lookup& lookup,
                                                 const std::string& launcher,
                                                 const char* rank_variable,
                                                 const char* world_variable) {
  const char* rank = lookup(rank_variable);
  if (rank == nullptr) return std::nullopt;
  const char* world = lookup(world_variable);
  if (world == nullptr) fail("{} is set but {} is not", rank_variable, world_variable);
  launch_environment env;
  env.launcher = launcher;
  env.world = static_cast<int>(parse_number(world, world_variable, 1, 1 << 20));
  env.rank = static_cast<int>(parse_number(rank, rank_variable, 0, env.world - 1));
  return env;
}

std::uint16_t port_from(const environment_lookup& lookup, std::uint16_t fallback) {
  const char* port = lookup("TROUPE_RENDEZVOUS_PORT");
  return port == nullptr
             ? fallback
             : static_cast<std::uint16_t>(parse_number(port, "TROUPE_RENDEZVOUS_PORT", 1, 65535));
}

}  // namespace

std::pair<std::string, std::uint16_t> parse_host_port(const std::string& text,
                                                      const std::string& what) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    fail("{}='{}' is not HOST:PORT", what, text);
  const std::string port = text.substr(colon + 1);
  return {text.substr(0, colon),
          static_cast<std::uint16_t>(parse_number(port.c_str(), what + " (its port)", 1, 65535))};
}

std::vector<std::string> expand_slurm_nodelist(const std::string& list) {
  std::vector<std::string> hosts;
  std::size_t i = 0;
  auto malformed = [&] { fail("SLURM_JOB_NODELIST='{}' is not a Slurm node list", list); };
  while (i < list.size()) {
    // One entry: a prefix, then optionally [ranges], then maybe a suffix, up to a top-level comma.
    std::string prefix;
    while (i < list.size() && list[i] != ',' && list[i] != '[') prefix += list[i++];
    if (i < list.size() && list[i] == '[') {
      const std::size_t close = list.find(']', i);
      if (close == std::string::npos) malformed();
      const std::string ranges = list.substr(i + 1, close - i - 1);
      i = close + 1;
      std::string suffix;
      while (i < list.size() && list[i] != ',') suffix += list[i++];
      std::size_t start = 0;
      while (start <= ranges.size()) {
        std::size_t comma = ranges.find(',', start);
        if (comma == std::string::npos) comma = ranges.size();
        const std::string range = ranges.substr(start, comma - start);
        const std::size_t dash = range.find('-');
        const std::string low = range.substr(0, dash);
        const std::string high = dash == std::string::npos ? low : range.substr(dash + 1);
        if (low.empty() || high.empty() ||
            low.find_first_not_of("0123456789") != std::string::npos ||
            high.find_first_not_of("0123456789") != std::string::npos)
          malformed();
        const long a = std::stol(low), b = std::stol(high);
        if (b < a) malformed();
        for (long n = a; n <= b; ++n) {
          std::string digits = std::to_string(n);
          // Zero padding: node[01-10] keeps the width of the lower bound.
          if (digits.size() < low.size()) digits.insert(0, low.size() - digits.size(), '0');
          hosts.push_back(prefix + digits + suffix);
        }
        start = comma + 1;
      }
    } else {
      if (prefix.empty()) malformed();
      hosts.push_back(prefix);
    }
    if (i < list.size() && list[i] == ',') ++i;
  }
  if (hosts.empty()) malformed();
  return hosts;
}

std::optional<launch_environment> detect_launch_environment(const environment_lookup& lookup) {
  // troupe's own variables (troupe launch on one machine sets them).
  if (auto env = rank_and_world(lookup, "troupe", "TROUPE_RANK", "TROUPE_WORLD_SIZE")) {
    if (const char* where = lookup("TROUPE_RENDEZVOUS")) {
      std::tie(env->rendezvous_host, env->rendezvous_port) =
          parse_host_port(where, "TROUPE_RENDEZVOUS");
    } else {
      env->rendezvous_port = port_from(lookup, default_rendezvous_port);
    }
    return env;
  }
  // torchrun: its agent's store holds MASTER_PORT, so troupe meets on the port after it.
  if (lookup("MASTER_ADDR") != nullptr) {
    if (auto env = rank_and_world(lookup, "torchrun", "RANK", "WORLD_SIZE")) {
      env->rendezvous_host = lookup("MASTER_ADDR");
      const char* port = lookup("MASTER_PORT");
      const long master = port == nullptr ? 29500 : parse_number(port, "MASTER_PORT", 1, 65534);
      env->rendezvous_port = port_from(lookup, static_cast<std::uint16_t>(master + 1));
      return env;
    }
  }
  // Open MPI: rank and size only; the rendezvous comes from --rendezvous or the topology.
  if (auto env =
          rank_and_world(lookup, "openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")) {
    env->rendezvous_port = port_from(lookup, default_rendezvous_port);
    return env;
  }
  // Slurm: the first node of the job's node list is the rendezvous.
  if (auto env = rank_and_world(lookup, "slurm", "SLURM_PROCID", "SLURM_NTASKS")) {
    const char* nodes = lookup("SLURM_JOB_NODELIST");
    if (nodes == nullptr) nodes = lookup("SLURM_NODELIST");
    if (nodes != nullptr) env->rendezvous_host = expand_slurm_nodelist(nodes).front();
    env->rendezvous_port = port_from(lookup, default_rendezvous_port);
    return env;
  }
  // Kubernetes LeaderWorkerSet: the leader (worker index 0) is the rendezvous.
  if (auto env = rank_and_world(lookup, "lws", "LWS_WORKER_INDEX", "LWS_GROUP_SIZE")) {
    if (const char* leader = lookup("LWS_LEADER_ADDRESS")) env->rendezvous_host = leader;
    env->rendezvous_port = port_from(lookup, default_rendezvous_port);
    return env;
  }
  return std::nullopt;
}

}  // namespace troupe
