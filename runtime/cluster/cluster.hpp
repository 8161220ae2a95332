#pragma once

// The processes of one job. Each process has a gateway actor, published through CAF's
// middleman: other processes' actors are reached through local proxies whose messages the
// gateway turns into envelopes (descriptors, through CAF) and tensors (through UCX), delivered
// in order per sending process. Any troupe message crosses (message.hpp: its declaration is its
// wire format); the gateway (gateway.hpp) is the only code that knows how. Rank 0 is the
// rendezvous: it listens on a known address, every other rank connects and registers, and rank 0
// hands out the table of processes; then every pair of processes is connected directly (CAF and
// UCX).
//
// Failure detection: every gateway monitors the others (CAF reports a lost connection at once,
// e.g. a killed process) and exchanges heartbeats (a process that stops answering, e.g. a
// stopped one, is declared dead after `heartbeat_timeout`). A dead process fails every request
// waiting on it, with a message naming its rank, host and actors, and the failure handlers run.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/core/error.hpp"
#include "runtime/transport/ucx_transport.hpp"

namespace troupe {

struct process_card;

/// The processes did not all meet (timeout, unreachable rank 0, a rank twice).
class rendezvous_error : public error {
 public:
  using error::error;
};

struct cluster_options {
  int rank = 0;
  int world = 1;
  /// The topology's host name of each rank (rank i runs host i's actors).
  std::vector<std::string> hosts;
  std::string rendezvous_host = "127.0.0.1";
  std::uint16_t rendezvous_port = 29400;
  std::chrono::milliseconds rendezvous_timeout{60000};
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{5000};
  ucx_options ucx;
};

class cluster {
 public:
  using failure_handler = std::function<void(int rank, const std::string& why)>;

  /// Joins the job; returns once every process is connected to every other. Throws
  /// rendezvous_error naming the ranks that never arrived or the address that was unreachable.
  cluster(actor_runtime& runtime, cluster_options options);
  /// Leaves: stops the gateway and UCX's progress loop.
  ~cluster();
  cluster(const cluster&) = delete;
  cluster& operator=(const cluster&) = delete;

  int rank() const { return options_.rank; }
  int world() const { return options_.world; }
  const std::string& host_of(int rank) const;

  /// Makes a local actor reachable by `name` from other processes.
  void expose(const std::string& name, const actor_ref& actor);
  /// This process's handle on actor `name` of process `rank`.
  actor_ref remote(const std::string& name, int rank);

  /// Waits until every process got here (after exposing its actors). Throws troupe::error when
  /// a process fails first or `timeout` passes.
  void barrier(std::chrono::milliseconds timeout);

  /// Makes `bytes` fetchable by every process under `name` (an NCCL group's unique id, made by
  /// the group's first member): through this process's own actor, so over CAF. Publishing a name
  /// again replaces its bytes.
  void publish(const std::string& name, std::vector<std::uint8_t> bytes);
  /// Whether this process published `name`.
  bool has_published(const std::string& name) const;
  /// What process `rank` published under `name`, asked until it has (it may publish later than
  /// this process asks). Throws rendezvous_error naming the name, the rank and the time waited
  /// when nothing came within `timeout`, or when the rank failed.
  std::vector<std::uint8_t> fetch(const std::string& name, int rank,
                                  std::chrono::milliseconds timeout);

  /// `handler(rank, message)` runs in the gateway when a process dies or stops answering; the
  /// message names the rank, its host and its actors.
  void on_failure(failure_handler handler);

  /// Rank 0: tells every other process to leave, with `code` (0: the job is done) and `why`;
  /// waits (a few seconds at most) until they heard it.
  void finish(int code, const std::string& why);
  /// Other ranks: blocks until rank 0 says to leave, or rank 0 fails; returns the code and why.
  std::pair<int, std::string> wait_for_finish();

  struct gateway_state;

 private:
  using time_point = std::chrono::steady_clock::time_point;
  // The rendezvous and the connections (rendezvous.cpp).
  void meet();
  std::vector<process_card> meet_as_rank_zero(process_card& mine, time_point deadline);
  std::vector<process_card> meet_as_other_rank(process_card& mine, time_point deadline);
  void leave();  // stops the gateway, the proxies and UCX's loop

  actor_runtime& runtime_;
  cluster_options options_;
  std::unique_ptr<ucx_transport> transport_;
  actor_ref progress_;  // the detached actor running UCX's progress loop
  actor_ref gateway_;
  std::vector<actor_ref> proxies_;
  std::shared_ptr<gateway_state> state_;
  std::mutex proxies_lock_;  // remote() may be called from several threads (fetch among them)
  struct board;              // what this process published (cluster.cpp)
  std::shared_ptr<board> board_;
  actor_ref publications_;           // the actor that answers for board_
  std::map<int, actor_ref> boards_;  // the other processes' publication actors
  std::mutex boards_lock_;
};

}  // namespace troupe
