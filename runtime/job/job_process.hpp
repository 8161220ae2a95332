#pragma once

// One process's share of a job: what every kind of job needs before it has any role, and what
// training uses today and serving will reuse (docs/architecture.md, "A second kind of job"):
//   - the actor runtime, and the process's place among the job's processes: for a multi-process
//     job the cluster (rendezvous, gateways, proxies) and which process runs which actor;
//   - the worker pool and exec context the process's actors compute on, with its GEMM provider;
//   - its side of hot swaps (process_plugins);
//   - its metrics registry and, on the coordinating process, the /metrics endpoint.
// Roles are spawned through place(): here when the topology puts them on this process's host,
// or else the proxy that reaches them in theirs.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/cluster.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/exec/thread_pool.hpp"
#include "runtime/job/process_plugins.hpp"
#include "runtime/metrics/metrics.hpp"
#include "runtime/topology/topology.hpp"

namespace troupe {

struct job_process_options {
  int threads = 0;            ///< worker pool size; 0: one per core
  int scheduler_threads = 2;  ///< message handling only: compute runs on the pool
  /// This process's place in a multi-process job (troupe launch); empty: every actor of the
  /// topology runs in this process, whatever its hosts.
  std::optional<cluster_options> cluster;
  /// Where metrics go; null: the process's own registry.
  std::shared_ptr<metrics_registry> metrics;
  /// The GEMM plugin every linear layer calls (FP8); null: the runtime's built-in FP32 GEMM.
  std::shared_ptr<const plugin_library> gemm;
};

class job_process {
 public:
  /// Starts the actor runtime and, in a multi-process job, meets the other processes first
  /// (so that the rendezvous timeout measures the processes' start, not the model's). Throws
  /// rendezvous_error naming who never came.
  job_process(const topology& topo, plugin_registry& registry, job_process_options options);
  /// Stops every actor (and leaves the other processes) before the pool and context go.
  ~job_process();
  job_process(const job_process&) = delete;
  job_process& operator=(const job_process&) = delete;

  actor_runtime& runtime() { return *runtime_; }
  metrics_registry& metrics() { return *metrics_; }
  thread_pool& pool() { return *pool_; }
  exec_context& context() { return *context_; }
  const std::shared_ptr<process_plugins>& plugins() { return plugins_; }
  plugin_registry& registry() { return registry_; }
  /// The other processes of the job; null in a single-process job.
  cluster* processes() { return processes_.get(); }

  /// Whether actor `name` runs in this process.
  bool is_local(const std::string& name) const;
  /// Whether this process coordinates: the only one, or rank 0.
  bool coordinates() const { return !processes_ || processes_->rank() == 0; }
  /// Spawns actor `name` here with `spawn_here` (and makes it reachable from the other
  /// processes), or returns this process's proxy for it.
  actor_ref place(const std::string& name, const std::function<actor_ref()>& spawn_here);
  /// Multi-process jobs: waits until every process has its actors up (nobody sends before).
  void barrier();

  /// Serves the metrics at host:port (the topology's [monitoring] metrics).
  void serve_metrics(const std::string& host, int port);
  /// The metrics endpoint's URL, or "".
  std::string metrics_url() const;

 private:
  plugin_registry& registry_;
  std::shared_ptr<metrics_registry> metrics_;
  std::unique_ptr<metrics_endpoint> endpoint_;
  std::unique_ptr<thread_pool> pool_;
  std::unique_ptr<exec_context> context_;
  std::shared_ptr<process_plugins> plugins_;
  // After what actors use: the runtime's destructor waits for the actors, before those go.
  std::unique_ptr<actor_runtime> runtime_;
  // After the runtime: it goes first.
  std::unique_ptr<cluster> processes_;
  std::map<std::string, int> rank_of_;  // actor name -> process rank
};

}  // namespace troupe
