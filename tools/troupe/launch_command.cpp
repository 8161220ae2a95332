// troupe launch: runs a topology as one process per host. Under a launcher (torchrun, Open MPI,
// Slurm, a Kubernetes LeaderWorkerSet, or troupe itself) this process is one rank; started by
// hand, it starts one process per host of the topology on this machine and waits for them.

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/cluster/launch_environment.hpp"
#include "runtime/core/error.hpp"
#include "runtime/topology/plan.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/local_ranks.hpp"
#include "tools/troupe/topology_input.hpp"
#include "tools/troupe/training_run.hpp"

namespace troupe::cli {

namespace {

struct launch_options {
  train_options train;
  std::string rendezvous;
  double rendezvous_timeout = 60.0;
  double heartbeat_timeout = 5.0;
};

std::chrono::milliseconds milliseconds(double seconds) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

// The local launcher forwards SIGINT and SIGTERM to rank 0 only: rank 0 checkpoints and tells the
// others to leave.
std::atomic<pid_t> rank_zero{0};

extern "C" void forward_to_rank_zero(int signal) {
  if (const pid_t pid = rank_zero.load(); pid > 0) kill(pid, signal);
}

/// This process's command line, for the ranks to run.
std::vector<std::string> rank_command_line(const launch_options& options, int world) {
  std::vector<std::string> arguments = own_command_line();
  if (options.train.threads == 0) {
    // The processes share this machine's cores.
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    arguments.push_back("--threads");
    arguments.push_back(std::to_string(std::max(1u, cores / static_cast<unsigned>(world))));
  }
  return arguments;
}

/// Starts `world` ranks that run `arguments` and meet at `rendezvous`; returns their process ids
/// in rank order.
std::vector<pid_t> start_ranks(int world, const std::string& rendezvous,
                               const std::vector<std::string>& arguments) {
  std::vector<pid_t> children;
  for (int rank = 0; rank < world; ++rank)
    children.push_back(start_rank(rank, world, rendezvous, arguments));
  return children;
}

/// Waits for the ranks in `children` (their entries become -1 as they end) and returns rank 0's
/// exit code. Rank 0's status is the job's; the others get a few seconds to leave after it (they
/// leave at once when rank 0 ends the job; a stopped or hung one is killed).
int wait_for_ranks(std::vector<pid_t>& children, const topology_plan& plan,
                   const std::string& resume_hint) {
  int code = exit_bad_input;
  std::size_t running = children.size();
  auto reap = [&](pid_t pid, int status) {
    for (std::size_t r = 0; r < children.size(); ++r)
      if (children[r] == pid) {
        children[r] = -1;
        --running;
        const int exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r == 0 && WIFSIGNALED(status)) {
          // Rank 0 could not say why it ended: the launcher does, in the job's own terms.
          fmt::print(stderr, "troupe launch: rank 0 ({}) was killed by signal {} ({}); {}\n",
                     plan.processes[0].host, WTERMSIG(status), strsignal(WTERMSIG(status)),
                     resume_hint);
          code = exit_process_failed;
        } else if (r == 0) {
          code = exit_code;
        } else if (exit_code != 0)
          fmt::print(stderr, "troupe launch: rank {} ({}) exited with status {}\n", r,
                     plan.processes[r].host, exit_code);
      }
  };
  while (children[0] > 0) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    reap(pid, status);
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(code == exit_ok ? 3 : 1);
  while (running > 0 && std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0)
      reap(pid, status);
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (pid_t pid : children)
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  return code;
}

/// One process per host on this machine; returns rank 0's exit code.
int launch_locally(const launch_options& options, const topology_plan& plan,
                   const std::string& checkpoint_root) {
  const std::string& root =
      options.train.checkpoint_dir.empty() ? checkpoint_root : options.train.checkpoint_dir;
  const int world = static_cast<int>(plan.processes.size());
  std::string rendezvous = options.rendezvous;
  if (rendezvous.empty()) rendezvous = fmt::format("127.0.0.1:{}", free_local_port());
  std::vector<std::string> arguments = rank_command_line(options, world);
  std::vector<pid_t> children = start_ranks(world, rendezvous, arguments);
  std::vector<std::string> described;
  for (int rank = 0; rank < world; ++rank)
    described.push_back(fmt::format("rank {} = {} (pid {})", rank, plan.processes[rank].host,
                                    children[static_cast<std::size_t>(rank)]));
  fmt::print(stderr, "troupe launch: {} processes on this machine, rendezvous {}: {}\n", world,
             rendezvous, fmt::join(described, ", "));
  rank_zero.store(children[0]);
  std::signal(SIGINT, forward_to_rank_zero);
  std::signal(SIGTERM, forward_to_rank_zero);

  const int code = wait_for_ranks(
      children, plan,
      fmt::format("its last complete checkpoint, if any, is under {} (continue with --resume {})",
                  root, root));
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return code;
}

int launch(const launch_options& options) {
  std::optional<launch_environment> env;
  try {
    env = detect_launch_environment([](const char* name) { return std::getenv(name); });
  } catch (const error& e) {
    fmt::print(stderr, "troupe launch: {}\n", e.what());
    return exit_bad_input;
  }
  plugin_registry registry;
  const std::string file = topology_or_default(options.train.file);
  auto loaded = load_for_command(file, registry, options.train.overrides);
  if (!loaded) return exit_bad_input;
  const topology_plan plan = plan_topology(loaded->topo);
  const int hosts = static_cast<int>(plan.processes.size());

  if (!env) {
    if (hosts == 1) {
      fmt::print(stderr, "troupe launch: {} has one host: running it in this process\n", file);
      return run_training(options.train, "troupe launch", std::nullopt);
    }
    return launch_locally(options, plan, loaded->topo.train.checkpoint_dir);
  }

  if (env->world != hosts) {
    std::vector<std::string> names;
    for (const auto& p : plan.processes) names.push_back(p.host);
    fmt::print(stderr,
               "troupe launch: {} places its actors on {} hosts ({}), but {} started {} "
               "processes: start one process per host\n",
               file, hosts, fmt::join(names, ", "), env->launcher, env->world);
    return exit_bad_input;
  }
  cluster_options placement;
  placement.rank = env->rank;
  placement.world = env->world;
  placement.rendezvous_host = env->rendezvous_host;
  placement.rendezvous_port = env->rendezvous_port;
  try {
    if (!options.rendezvous.empty())
      std::tie(placement.rendezvous_host, placement.rendezvous_port) =
          parse_host_port(options.rendezvous, "--rendezvous");
  } catch (const error& e) {
    fmt::print(stderr, "troupe launch: {}\n", e.what());
    return exit_bad_input;
  }
  // Open MPI names no rendezvous: rank 0's host as the topology gives it.
  if (placement.rendezvous_host.empty()) placement.rendezvous_host = plan.processes[0].address;
  placement.rendezvous_timeout = milliseconds(options.rendezvous_timeout);
  placement.heartbeat_timeout = milliseconds(options.heartbeat_timeout);
  placement.heartbeat_interval =
      std::min(std::chrono::milliseconds(1000), placement.heartbeat_timeout / 3);
  const std::string command =
      env->rank == 0 ? std::string("troupe launch")
                     : fmt::format("troupe launch (rank {}, {})", env->rank,
                                   plan.processes[static_cast<std::size_t>(env->rank)].host);
  return run_training(options.train, command, placement);
}

}  // namespace

void add_launch_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<launch_options>();
  auto* command = app.add_subcommand(
      "launch",
      "Run a topology as one process per host: under torchrun, Open MPI, Slurm or a "
      "LeaderWorkerSet as one rank; otherwise one process per host on this machine "
      "(docs/launch.md)");
  add_training_options(command, options->train);
  command->add_option("--rendezvous", options->rendezvous,
                      "HOST:PORT where rank 0 listens (default: the launcher's, else the first "
                      "host's address at port 29400)");
  command
      ->add_option("--rendezvous-timeout", options->rendezvous_timeout,
                   "Seconds to wait for every process at the rendezvous")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  command
      ->add_option("--heartbeat-timeout", options->heartbeat_timeout,
                   "Seconds without a heartbeat after which a process counts as dead")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  command->callback([options, &exit_code] { exit_code = launch(*options); });
}

}  // namespace troupe::cli
