#include "tools/troupe/serve_processes.hpp"

#include <sys/wait.h>

#include <csignal>
#include <cstdlib>
#include <exception>
#include <thread>

#include <fmt/format.h>

#include "runtime/cluster/launch_environment.hpp"
#include "runtime/core/error.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/local_ranks.hpp"

namespace troupe::cli {

serve_processes::serve_processes(const std::string& front_host, const std::string& decode_host,
                                 std::shared_ptr<metrics_registry> metrics) {
  cluster_options options;
  options.world = 2;
  options.hosts = {front_host, decode_host};
  const auto env = detect_launch_environment([](const char* name) { return std::getenv(name); });
  if (env) {
    if (env->world != 2)
      fail(
          "[serve] decode_host = \"{}\": the job has 2 processes (HTTP and prefill on {}, decode "
          "on {}), but the launcher ({}) started {}; started by hand, unset the launcher's "
          "variables (TROUPE_RANK, RANK and WORLD_SIZE, OMPI_COMM_WORLD_*, SLURM_PROCID and "
          "SLURM_NTASKS, LWS_*) and troupe serve starts the decode process itself",
          decode_host, front_host, decode_host, env->launcher, env->world);
    if (env->rendezvous_host.empty())
      fail("the launcher ({}) names no rendezvous address: set TROUPE_RENDEZVOUS=HOST:PORT",
           env->launcher);
    options.rank = env->rank;
    options.rendezvous_host = env->rendezvous_host;
    options.rendezvous_port = env->rendezvous_port;
  } else {
    // Started by hand: this is rank 0, and rank 1 runs on this machine too.
    const std::uint16_t port = free_local_port();
    options.rendezvous_port = port;
    child_ = start_rank(1, 2, fmt::format("127.0.0.1:{}", port), own_command_line());
    fmt::print(stderr, "troupe serve: decode process (rank 1, host {}) started, pid {}\n",
               decode_host, child_);
  }
  actor_runtime_options runtime_options;
  runtime_options.network = true;
  runtime_ = std::make_unique<actor_runtime>(runtime_options, std::move(metrics));
  cluster_ = std::make_unique<cluster>(*runtime_, options);
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
  if (child_ <= 0) return;
  // The decode process leaves once told; one that does not within 10 s is killed.
  int status = 0;
  for (int i = 0; i < 100; ++i) {
    if (waitpid(child_, &status, WNOHANG) == child_) {
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fmt::print(stderr, "troupe serve: the decode process (pid {}) ended with {}\n", child_,
                   WIFEXITED(status) ? fmt::format("status {}", WEXITSTATUS(status))
                                     : fmt::format("signal {}", WTERMSIG(status)));
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(child_, SIGKILL);
  waitpid(child_, nullptr, 0);
  fmt::print(stderr, "troupe serve: the decode process (pid {}) did not leave; killed\n", child_);
}

}  // namespace troupe::cli
