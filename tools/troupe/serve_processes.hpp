#pragma once

// The processes of `troupe serve` when [serve] decode_host(s) put the decode instances, or
// expert_host(s) the instances' expert shards, on other hosts: rank 0 (the first host) serves HTTP
// and prefills, rank i + 1 (the i-th decode host) decodes (runtime/serve/remote_decode.hpp), and
// the expert ranks after them (one per expert host) hold the expert shards of every instance
// (runtime/experts/remote_shard_set.hpp). Under a launcher (the environments `troupe launch`
// reads: its own, torchrun, Open MPI, Slurm, a LeaderWorkerSet) every rank runs `troupe serve`
// with the same arguments; started by hand, `troupe serve` is rank 0 and starts the other ranks
// on this machine itself. The other ranks ignore SIGTERM and SIGINT on purpose: they leave when
// rank 0 says so, after rank 0's drain (which needs them to finish the sequences they decode),
// or when rank 0 is gone.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/cluster.hpp"
#include "runtime/metrics/metrics.hpp"

namespace troupe::cli {

class serve_processes {
 public:
  /// Joins the job (the rendezvous waits up to a minute for the other processes). Throws
  /// troupe::error for a launcher's world of another size than 1 + decode_hosts + expert_hosts,
  /// rendezvous_error when a process never comes.
  serve_processes(const std::string& front_host, const std::vector<std::string>& decode_hosts,
                  const std::vector<std::string>& expert_hosts,
                  std::shared_ptr<metrics_registry> metrics);
  /// Rank 0: tells the other ranks to leave (if finish() did not; with a failure code when an
  /// exception is on its way) and waits up to 10 s for the children it started, then kills them.
  ~serve_processes();
  serve_processes(const serve_processes&) = delete;
  serve_processes& operator=(const serve_processes&) = delete;

  int rank() const { return cluster_->rank(); }
  /// Decode processes: ranks 1 to decode_processes().
  int decode_processes() const { return decode_; }
  /// Expert processes: the ranks after the decode processes'.
  int expert_processes() const { return cluster_->world() - 1 - decode_; }
  int first_expert_rank() const { return 1 + decode_; }
  bool is_decode_rank() const { return rank() >= 1 && rank() <= decode_; }
  bool is_expert_rank() const { return rank() > decode_; }
  actor_runtime& runtime() { return *runtime_; }
  cluster& job() { return *cluster_; }
  /// Rank 0, when serving ends: tells the other ranks to leave with `code` and `why`.
  void finish(int code, const std::string& why);

  /// Whether a launcher started this process (its environment names a rank and a world); if not,
  /// rank 0 starts the other ranks on this machine.
  static bool under_launcher();

  /// The name rank 0 exposes its front actor for decode rank `rank` under.
  static std::string front_name(int rank);

 private:
  std::unique_ptr<actor_runtime> runtime_;
  std::unique_ptr<cluster> cluster_;
  int decode_ = 0;
  std::vector<pid_t> children_;  ///< rank i + 1's pid, when started by hand
  bool finished_ = false;
};

}  // namespace troupe::cli
