// troupe bench transport: tensors between two processes through troupe's UCX transport, as a
// ratio to ucx_perftest (the same UCX, the same machine, the same run), and the round trip of an
// actor request between two processes of a job (the control plane: proxy, gateways, CAF).

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/cluster/cluster.hpp"
#include "runtime/core/error.hpp"
#include "runtime/transport/ucx_transport.hpp"
#include "tools/troupe/commands.hpp"
#include "tools/troupe/pipe_io.hpp"

namespace troupe::cli {

namespace {

using clock_type = std::chrono::steady_clock;

struct transport_bench_options {
  int latency_iterations = 2000;
  int bandwidth_bytes_per_size = 1 << 30;  ///< data moved per bandwidth size
  bool no_reference = false;
};

/// A counter a progress thread raises and a waiting thread watches.
class arrivals {
 public:
  void add() {
    std::lock_guard lock(mutex_);
    ++count_;
    changed_.notify_all();
  }
  void wait_for(std::int64_t n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return count_ >= n; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::int64_t count_ = 0;
};

/// The transport of one side, its progress loop running.
struct side {
  ucx_transport transport;
  std::thread loop;
  explicit side(int rank) : transport(rank), loop([this] { transport.run(); }) {}
  ~side() {
    transport.close();
    loop.join();
  }
};

/// Swaps worker addresses with the other process over `fd`.
std::vector<std::uint8_t> swap_addresses(int fd, const std::vector<std::uint8_t>& mine) {
  const std::uint64_t n = mine.size();
  write_all(fd, &n, sizeof n, "bench transport");
  write_all(fd, mine.data(), mine.size(), "bench transport");
  std::uint64_t m = 0;
  read_all(fd, &m, sizeof m, "bench transport");
  std::vector<std::uint8_t> theirs(m);
  read_all(fd, theirs.data(), m, "bench transport");
  return theirs;
}

const std::vector<std::size_t> latency_sizes{8, 4096, 65536};
const std::vector<std::size_t> bandwidth_sizes{1 << 20, 4 << 20, 16 << 20, 64 << 20};

int iterations_for(std::size_t bytes, const transport_bench_options& o) {
  return std::max(8,
                  static_cast<int>(o.bandwidth_bytes_per_size / static_cast<std::int64_t>(bytes)));
}

/// The echo side: answers each ping, acknowledges each bandwidth burst.
void serve_transport(int fd, const transport_bench_options& options) {
  side me(1);
  me.transport.connect(0, swap_addresses(fd, me.transport.address()));
  std::uint64_t tag = 1;
  const tensor ack = tensor::zeros(dtype::u8, {1});
  for (std::size_t size = 0; size < latency_sizes.size(); ++size)
    for (int i = 0; i < options.latency_iterations; ++i) {
      const std::uint64_t t = tag++;
      me.transport.expect(0, t, [&me, t](tensor value) { me.transport.send(0, t, value); });
    }
  for (std::size_t bytes : bandwidth_sizes) {
    const int n = iterations_for(bytes, options);
    auto got = std::make_shared<std::atomic<int>>(0);
    const std::uint64_t first = tag;
    for (int i = 0; i < n; ++i)
      me.transport.expect(0, tag++, [&me, got, n, first, ack](tensor) {
        if (got->fetch_add(1) + 1 == n) me.transport.send(0, first, ack);
      });
  }
  char done = 0;
  read_all(fd, &done, 1, "bench transport");
}

struct transport_figures {
  std::vector<double> latency_us;       // one way, per latency size
  std::vector<double> bandwidth_mib_s;  // per bandwidth size
};

transport_figures measure_transport(int fd, const transport_bench_options& options) {
  side me(0);
  me.transport.connect(1, swap_addresses(fd, me.transport.address()));
  transport_figures figures;
  std::uint64_t tag = 1;
  for (std::size_t bytes : latency_sizes) {
    const tensor ping = tensor::zeros(dtype::u8, {static_cast<std::int64_t>(bytes)});
    arrivals back;
    // Warm up (connection set-up) with the first tenth, then time the rest.
    const int warm = options.latency_iterations / 10;
    clock_type::time_point start;
    for (int i = 0; i < options.latency_iterations; ++i) {
      if (i == warm) start = clock_type::now();
      const std::uint64_t t = tag++;
      me.transport.expect(1, t, [&back](tensor) { back.add(); });
      me.transport.send(0 + 1, t, ping);
      back.wait_for(i + 1);
    }
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    figures.latency_us.push_back(seconds / (options.latency_iterations - warm) / 2 * 1e6);
  }
  for (std::size_t bytes : bandwidth_sizes) {
    const int n = iterations_for(bytes, options);
    const tensor data = tensor::zeros(dtype::u8, {static_cast<std::int64_t>(bytes)});
    arrivals acked;
    const std::uint64_t first = tag;
    me.transport.expect(1, first, [&acked](tensor) { acked.add(); });
    const auto start = clock_type::now();
    // All at once: the transport keeps a window in flight.
    for (int i = 0; i < n; ++i) me.transport.send(1, tag++, data);
    acked.wait_for(1);
    const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    figures.bandwidth_mib_s.push_back(static_cast<double>(bytes) * n / seconds / (1 << 20));
  }
  const char done = 1;
  write_all(fd, &done, 1, "bench transport");
  return figures;
}

/// The request the round trip measures.
struct bench_ping {
  TROUPE_REQUEST("bench_ping", std::int64_t);
  std::int64_t i = 0;
  auto fields() { return std::tie(i); }
};

/// A free TCP port on the loopback (for the rendezvous), or 29400.
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  std::uint16_t port = 29400;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  if (fd >= 0) ::close(fd);
  return port;
}

/// An actor request's round trip to another process of a job, in µs: a proxy, the two gateways
/// and CAF's middleman, as every control message between processes of a job travels.
double request_round_trip_us(int iterations) {
  cluster_options options;
  options.world = 2;
  options.hosts = {"bench0", "bench1"};
  options.rendezvous_port = free_port();
  const pid_t child = fork();
  if (child == 0) {
    int code = 0;
    try {
      actor_runtime runtime({2, true});
      options.rank = 1;
      cluster job(runtime, options);
      job.expose("pong", runtime.spawn("bench", [](event_actor&) {
        return behavior().on<bench_ping>([](bench_ping& ping) { return ping.i; });
      }));
      job.barrier(std::chrono::seconds(30));
      job.wait_for_finish();
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench transport (pong side): {}\n", e.what());
      code = 1;
    }
    std::_Exit(code);
  }
  double us = 0;
  {
    actor_runtime runtime({2, true});
    options.rank = 0;
    cluster job(runtime, options);
    const actor_ref pong = job.remote("pong", 1);
    job.barrier(std::chrono::seconds(30));
    {
      scoped_actor self(runtime);
      auto ask = [&](std::int64_t i) {
        self.ask(pong, bench_ping{i}, "bench", std::chrono::seconds(10));
      };
      for (int i = 0; i < iterations / 10; ++i) ask(i);
      const auto start = clock_type::now();
      for (int i = 0; i < iterations; ++i) ask(i);
      us = std::chrono::duration<double>(clock_type::now() - start).count() / iterations * 1e6;
    }
    job.finish(0, "");
  }
  waitpid(child, nullptr, 0);
  return us;
}

/// ucx_perftest's figure for `test` at `bytes` ("Final:" line: the average latency in µs, or
/// the average bandwidth in MiB/s), server and client on the loopback; nullopt when it fails.
std::optional<double> perftest(const std::string& test, std::size_t bytes, int iterations,
                               bool bandwidth, const std::string& extra = "") {
  static int port = 23000 + static_cast<int>(getpid() % 5000);
  ++port;
  const std::string server =
      fmt::format("ucx_perftest -t {} -s {} -n {} -p {} {} >/dev/null 2>&1 &", test, bytes,
                  iterations, port, extra);
  if (std::system(server.c_str()) != 0) return std::nullopt;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string client = fmt::format("ucx_perftest 127.0.0.1 -t {} -s {} -n {} -p {} {} 2>&1",
                                         test, bytes, iterations, port, extra);
  FILE* pipe = popen(client.c_str(), "r");
  if (pipe == nullptr) return std::nullopt;
  std::string output;
  std::array<char, 4096> buffer{};
  for (std::size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;)
    output.append(buffer.data(), n);
  pclose(pipe);
  const auto at = output.find("Final:");
  if (at == std::string::npos) return std::nullopt;
  std::istringstream fields(output.substr(at + 6));
  double iters = 0, p50 = 0, average = 0, overall = 0, bw_average = 0;
  fields >> iters >> p50 >> average >> overall >> bw_average;
  if (!fields) return std::nullopt;
  return bandwidth ? bw_average : average;
}

std::string size_text(std::size_t bytes) {
  if (bytes >= (1 << 20)) return fmt::format("{} MiB", bytes >> 20);
  if (bytes >= 1024) return fmt::format("{} KiB", bytes >> 10);
  return fmt::format("{} B", bytes);
}

int bench_transport(const transport_bench_options& options) {
  const bool have_perftest =
      !options.no_reference && std::system("command -v ucx_perftest >/dev/null 2>&1") == 0;
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) fail("bench transport: socketpair failed");
  const pid_t child = fork();
  if (child == 0) {
    ::close(fds[0]);
    int code = 0;
    try {
      serve_transport(fds[1], options);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench transport (echo side): {}\n", e.what());
      code = 1;
    }
    std::_Exit(code);
  }
  ::close(fds[1]);
  const transport_figures figures = measure_transport(fds[0], options);
  int status = 0;
  waitpid(child, &status, 0);
  ::close(fds[0]);

  fmt::print("troupe bench transport: two processes on this machine, UCX {} (UCX_TLS={})\n", "1.13",
             std::getenv("UCX_TLS") ? std::getenv("UCX_TLS") : "all");
  fmt::print("\nlatency, one way (ping-pong / 2)\n{:>10}  {:>12}  {:>14}  {:>6}\n", "size",
             "troupe µs", "ucx_perftest µs", "ratio");
  for (std::size_t i = 0; i < latency_sizes.size(); ++i) {
    const auto reference =
        have_perftest ? perftest("ucp_am_lat", latency_sizes[i], options.latency_iterations, false)
                      : std::nullopt;
    fmt::print("{:>10}  {:>12.2f}  {:>14}  {:>6}\n", size_text(latency_sizes[i]),
               figures.latency_us[i], reference ? fmt::format("{:.2f}", *reference) : "-",
               reference ? fmt::format("{:.2f}", *reference / figures.latency_us[i]) : "-");
  }
  fmt::print(
      "\nbandwidth, one way (ucx_perftest: ucp_am_bw, the better of its default window and "
      "-O 2)\n{:>10}  {:>12}  {:>14}  {:>6}\n",
      "size", "troupe MiB/s", "ucx_perftest", "ratio");
  for (std::size_t i = 0; i < bandwidth_sizes.size(); ++i) {
    // The better of ucx_perftest's default window and two sends in flight (near troupe's).
    std::optional<double> reference;
    if (have_perftest)
      for (const char* window : {"", "-O 2"}) {
        auto figure = perftest("ucp_am_bw", bandwidth_sizes[i],
                               iterations_for(bandwidth_sizes[i], options), true, window);
        if (figure && (!reference || *figure > *reference)) reference = figure;
      }
    fmt::print("{:>10}  {:>12.0f}  {:>14}  {:>6}\n", size_text(bandwidth_sizes[i]),
               figures.bandwidth_mib_s[i], reference ? fmt::format("{:.0f}", *reference) : "-",
               reference ? fmt::format("{:.2f}", figures.bandwidth_mib_s[i] / *reference) : "-");
  }
  fmt::print(
      "\nactor request round trip between two processes (control plane: proxy, gateways, CAF): "
      "{:.1f} µs\n",
      request_round_trip_us(2000));
  if (!have_perftest && !options.no_reference)
    fmt::print("(ucx_perftest is not installed: tools/setup installs ucx-utils)\n");
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? exit_ok : exit_bad_input;
}

}  // namespace

void add_bench_transport_command(CLI::App& bench_group, int& exit_code) {
  auto options = std::make_shared<transport_bench_options>();
  auto* command = bench_group.add_subcommand(
      "transport",
      "Tensors between two processes through troupe's UCX transport against ucx_perftest, and "
      "the round trip of an actor request between two processes");
  command
      ->add_option("--latency-iterations", options->latency_iterations,
                   "Ping-pongs per latency size")
      ->check(within({1, 1 << 24}))
      ->capture_default_str();
  command->add_flag("--no-reference", options->no_reference, "Do not run ucx_perftest");
  command->callback([options, &exit_code] {
    try {
      exit_code = bench_transport(*options);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe bench transport: {}\n", e.what());
      exit_code = exit_bad_input;
    }
  });
}

}  // namespace troupe::cli
