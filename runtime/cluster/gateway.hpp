#pragma once

// The gateway of one process of a job, and the proxies that stand in for other processes'
// actors (cluster.hpp says what they do). Internal to runtime/cluster: it speaks CAF.
//
// The gateway's own protocol (CAF messages between gateways and from the cluster object):
//   expose(name, actor), proxy(name, rank, proxy)   names for local actors and proxies
//   forward(target, rank, message)                   a proxy's message for another process
//   envelope, arrived(tensor)                         another process's message and its tensors
//   hello, gather, missing, introduce, peers_in       the rendezvous (rendezvous.cpp)
//   ping, tick, peer_down, watch                      heartbeats and failures
//   barrier(rank), finish(code, why)                  the start barrier and the end of the job

#include <chrono>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/response_promise.hpp>

#include "runtime/actor/detail/caf_actor.hpp"
#include "runtime/actor/wire.hpp"
#include "runtime/cluster/cluster.hpp"
#include "runtime/cluster/envelope.hpp"

namespace troupe {

namespace gateway_atoms {
TROUPE_ATOM(forward);
TROUPE_ATOM(arrived);
TROUPE_ATOM(expose);
TROUPE_ATOM(proxy);
TROUPE_ATOM(watch);
TROUPE_ATOM(hello);
TROUPE_ATOM(gather);
TROUPE_ATOM(missing);
TROUPE_ATOM(introduce);
TROUPE_ATOM(peers_in);
TROUPE_ATOM(ping);
TROUPE_ATOM(tick);
TROUPE_ATOM(peer_down);
TROUPE_ATOM(barrier);
TROUPE_ATOM(finish);
}  // namespace gateway_atoms

using gateway_clock = std::chrono::steady_clock;

/// A tensor that arrived over UCX for entry `serial` of the queue from `from`.
struct arrived_tensor {
  std::int32_t from = 0;
  std::uint64_t serial = 0;
  std::size_t index = 0;
  tensor value;
};

/// A failure handler on its way to the gateway.
struct failure_watch {
  cluster::failure_handler handler;
};

/// An envelope waiting for its tensors, in its sender's order.
struct incoming_envelope {
  std::uint64_t serial = 0;
  envelope letter;
  std::vector<tensor> tensors;
  std::size_t missing = 0;
};

/// A request sent to another process, waiting for its reply.
struct outgoing_request {
  caf::response_promise promise;
  caf::strong_actor_ptr asker;
  const message_type_info* reply_type = nullptr;
  std::int32_t rank = 0;
  std::string target;
};

struct cluster::gateway_state {
  cluster_options options;
  ucx_transport* transport = nullptr;
  actor_names names;

  std::map<std::string, caf::actor> local;                    // exposed actors by name
  std::map<std::string, std::pair<int, caf::actor>> proxies;  // remote actors by name
  std::map<caf::actor_addr, std::string> name_of;             // both, by address
  std::map<int, caf::actor> peers;                            // other ranks' gateways
  std::map<int, gateway_clock::time_point> last_heard;
  std::map<int, std::string> dead;
  std::vector<failure_handler> failure_handlers;

  std::uint64_t next_tag = 1, next_request = 1, next_serial = 1;
  std::map<std::uint64_t, outgoing_request> pending;
  std::map<int, std::deque<incoming_envelope>> queues;

  // Rendezvous (rank 0): who registered, and who waits for the table.
  std::map<int, process_card> cards;
  std::vector<caf::response_promise> card_waiters;
  caf::response_promise gathered;
  caf::strong_actor_ptr gathered_asker;  // rank 0's meet(): the table's writes go to it
  bool gathering = false;
  caf::response_promise peers_complete;
  bool awaiting_peers = false;
  // Barrier (rank 0 counts, the others wait).
  std::set<int> at_barrier;
  std::vector<caf::response_promise> barrier_waiters;
  // Leaving (other ranks).
  std::promise<std::pair<int, std::string>> finish_promise;
  bool finish_set = false;

  /// "rank 1 (host node1: stage1, shard2)".
  std::string describe(int rank) const;
  void set_finish(int code, const std::string& why);
};

using gateway_state_ptr = std::shared_ptr<cluster::gateway_state>;

/// The gateway actor's behavior.
caf::behavior gateway(detail::instrumented_actor* self, gateway_state_ptr st);

/// A stand-in for actor `name` of process `rank`: everything it receives goes to `gateway`,
/// which answers the original sender (delegation).
caf::behavior proxy(detail::instrumented_actor* self, caf::actor gateway, std::string name,
                    std::int32_t rank);

/// "5 s".
std::string seconds_text(std::chrono::milliseconds d);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::arrived_tensor)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::failure_watch)
