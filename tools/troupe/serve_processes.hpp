#pragma once

// The two processes of `troupe serve` when [serve] decode_host puts the decode instances on
// another host: rank 0 (the first host) serves HTTP and prefills, rank 1 (the decode host)
// decodes (runtime/serve/remote_decode.hpp). Under a launcher (the environments `troupe launch`
// reads: its own, torchrun, Open MPI, Slurm, a LeaderWorkerSet) every rank runs `troupe serve`
// with the same arguments; started by hand, `troupe serve` is rank 0 and starts rank 1 on this
// machine itself. Rank 1 ignores SIGTERM and SIGINT on purpose: it leaves when rank 0 says so,
// after rank 0's drain (which needs it to finish the sequences it decodes), or when rank 0 is
// gone.

#include <sys/types.h>

#include <memory>
#include <string>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/cluster.hpp"
#include "runtime/metrics/metrics.hpp"

namespace troupe::cli {

class serve_processes {
 public:
  /// Joins the job (the rendezvous waits up to a minute for the other process). Throws
  /// troupe::error for a launcher's world of another size than 2, rendezvous_error when the
  /// other process never comes.
  serve_processes(const std::string& front_host, const std::string& decode_host,
                  std::shared_ptr<metrics_registry> metrics);
  /// Rank 0: tells rank 1 to leave (if finish() did not; with a failure code when an exception
  /// is on its way) and waits up to 10 s for the child it started, then kills it.
  ~serve_processes();
  serve_processes(const serve_processes&) = delete;
  serve_processes& operator=(const serve_processes&) = delete;

  int rank() const { return cluster_->rank(); }
  actor_runtime& runtime() { return *runtime_; }
  cluster& job() { return *cluster_; }
  /// Rank 0, when serving ends: tells rank 1 to leave with `code` and `why`.
  void finish(int code, const std::string& why);

 private:
  std::unique_ptr<actor_runtime> runtime_;
  std::unique_ptr<cluster> cluster_;
  pid_t child_ = -1;
  bool finished_ = false;
};

}  // namespace troupe::cli
