#include "runtime/job/job_process.hpp"

#include <thread>

#include "runtime/plugin/instance.hpp"
#include "runtime/topology/plan.hpp"

namespace troupe {

job_process::job_process(const topology& topo, plugin_registry& registry,
                         job_process_options options)
    : registry_(registry),
      metrics_(options.metrics ? options.metrics : std::make_shared<metrics_registry>()) {
  actor_runtime_options runtime_options;
  runtime_options.scheduler_threads = options.scheduler_threads;
  runtime_options.network = options.cluster.has_value();
  runtime_ = std::make_unique<actor_runtime>(runtime_options, metrics_);
  if (options.cluster) {
    cluster_options placement = *options.cluster;
    placement.hosts.clear();
    for (const auto& process : plan_topology(topo).processes) {
      placement.hosts.push_back(process.host);
      for (const auto& actor : process.actors) rank_of_[actor] = process.rank;
    }
    processes_ = std::make_unique<cluster>(*runtime_, placement);
  }
  const int threads = options.threads > 0
                          ? options.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  pool_ = std::make_unique<thread_pool>(threads);
  std::unique_ptr<gemm_instance> gemm;
  if (options.gemm) gemm = std::make_unique<gemm_instance>(options.gemm, instance_options{});
  context_ =
      std::make_unique<exec_context>(device::cpu(), *pool_, gemm ? gemm->provider() : nullptr);
  plugins_ = std::make_shared<process_plugins>(registry, *context_, std::move(gemm));
}

job_process::~job_process() {
  processes_.reset();
  runtime_.reset();
}

bool job_process::is_local(const std::string& name) const {
  return !processes_ || rank_of_.at(name) == processes_->rank();
}

actor_ref job_process::place(const std::string& name,
                             const std::function<actor_ref()>& spawn_here) {
  if (!is_local(name)) return processes_->remote(name, rank_of_.at(name));
  actor_ref actor = spawn_here();
  if (processes_) processes_->expose(name, actor);
  return actor;
}

void job_process::barrier() {
  if (processes_) processes_->barrier(std::chrono::minutes(30));
}

void job_process::serve_metrics(const std::string& host, int port) {
  endpoint_ = std::make_unique<metrics_endpoint>(host, port, *metrics_);
}

std::string job_process::metrics_url() const {
  return endpoint_ ? endpoint_->url() : std::string();
}

}  // namespace troupe
