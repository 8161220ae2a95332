#include "tools/troupe/serve_processes.hpp"

#include <sys/wait.h>

#include <csignal>
#include <cstdlib>
#include <exception>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/cluster/launch_environment.hpp"
#include "runtime/core/error.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/local_ranks.hpp"

namespace troupe::cli {

serve_processes::serve_processes(const std::string& front_host,
                                 const std::vector<std::string>& decode_hosts,
                                 const std::vector<std::string>& expert_hosts,
                                 std::shared_ptr<metrics_registry> metrics)
    : decode_(static_cast<int>(decode_hosts.size())) {
  const int world = 1 + decode_ + static_cast<int>(expert_hosts.size());
  cluster_options options;
  options.world = world;
  options.hosts = {front_host};
  options.hosts.insert(options.hosts.end(), decode_hosts.begin(), decode_hosts.end());
  options.hosts.insert(options.hosts.end(), expert_hosts.begin(), expert_hosts.end());
  const auto env = detect_launch_environment([](const char* name) { return std::getenv(name); });
  if (env) {
    if (env->world != world)
      fail(
          "[serve]: the job has {} processes (HTTP and prefill on {}, decode on [{}], expert "
          "shards on [{}]), but the launcher ({}) started {}; started by hand, unset the "
          "launcher's variables (TROUPE_RANK, RANK and WORLD_SIZE, OMPI_COMM_WORLD_*, "
          "SLURM_PROCID and SLURM_NTASKS, LWS_*) and troupe serve starts the other processes "
          "itself",
          world, front_host, fmt::join(decode_hosts, ", "), fmt::join(expert_hosts, ", "),
          env->launcher, env->world);
    if (env->rendezvous_host.empty())
      fail("the launcher ({}) names no rendezvous address: set TROUPE_RENDEZVOUS=HOST:PORT",
           env->launcher);
    options.rank = env->rank;
    options.rendezvous_host = env->rendezvous_host;
    options.rendezvous_port = env->rendezvous_port;
  } else {
    // Started by hand: this is rank 0, and the other ranks run on this machine too.
    const std::uint16_t port = free_local_port();
    options.rendezvous_port = port;
    for (int rank = 1; rank < world; ++rank) {
      children_.push_back(
          start_rank(rank, world, fmt::format("127.0.0.1:{}", port), own_command_line()));
      fmt::print(stderr, "troupe serve: {} process (rank {}, host {}) started, pid {}\n",
                 rank <= decode_ ? "decode" : "expert", rank,
                 options.hosts[static_cast<std::size_t>(rank)], children_.back());
    }
  }
  actor_runtime_options runtime_options;
  runtime_options.network = true;
  runtime_ = std::make_unique<actor_runtime>(runtime_options, std::move(metrics));
  cluster_ = std::make_unique<cluster>(*runtime_, options);
}

bool serve_processes::under_launcher() {
  return detect_launch_environment([](const char* name) { return std::getenv(name); }).has_value();
}

std::string serve_processes::front_name(int rank) {
  return fmt::format("serve_front_{}", rank);
}

void serve_processes::finish(int code, const std::string& why) {
  if (finished_ || cluster_->rank() != 0) return;
  finished_ = true;
  cluster_->finish(code, why);
}

serve_processes::~serve_processes() {
  if (std::uncaught_exceptions() > 0)
    finish(exit_bad_input, "the serving process failed");
  else
    finish(0, "the server stopped");
  cluster_.reset();
  runtime_.reset();
  // The other processes leave once told; one that does not within 10 s is killed.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (std::size_t i = 0; i < children_.size(); ++i) {
    const pid_t child = children_[i];
    int status = 0;
    bool ended = false;
    while (!ended && std::chrono::steady_clock::now() < deadline) {
      ended = waitpid(child, &status, WNOHANG) == child;
      if (!ended) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!ended) {
      kill(child, SIGKILL);
      waitpid(child, nullptr, 0);
      fmt::print(stderr, "troupe serve: the process of rank {} (pid {}) did not leave; killed\n",
                 i + 1, child);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fmt::print(stderr, "troupe serve: the process of rank {} (pid {}) ended with {}\n", i + 1,
                 child,
                 WIFEXITED(status) ? fmt::format("status {}", WEXITSTATUS(status))
                                   : fmt::format("signal {}", WTERMSIG(status)));
    }
  }
}

}  // namespace troupe::cli
