#pragma once

// Starting the ranks of a multi-process job on this machine (troupe launch, and troupe serve
// when its decode instances run on another host): this process's own command line, a free
// loopback port for the rendezvous, and a rank started as a child that dies with its parent.

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace troupe::cli {

/// This process's own command line (to start the other ranks the same way).
std::vector<std::string> own_command_line();

/// A port nobody listens on now (the kernel's pick), for a rendezvous on this machine.
std::uint16_t free_local_port();

/// Starts rank `rank` of `world` running `arguments` (this executable), meeting at
/// `rendezvous`: TROUPE_RANK, TROUPE_WORLD_SIZE and TROUPE_RENDEZVOUS in its environment, its own
/// process group (a terminal's ^C reaches the launcher only), killed when its parent dies.
pid_t start_rank(int rank, int world, const std::string& rendezvous,
                 std::vector<std::string> arguments);

}  // namespace troupe::cli
