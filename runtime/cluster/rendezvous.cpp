// How the processes of a job meet: rank 0 listens on the rendezvous address, every other rank
// connects and registers its gateway and UCX address, rank 0 hands out the table, then every pair
// connects directly (CAF and UCX) and the heartbeats start.

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <caf/all.hpp>
#include <caf/io/middleman.hpp>

#include "runtime/cluster/cluster.hpp"
#include "runtime/cluster/gateway.hpp"

namespace troupe {

namespace {

using namespace gateway_atoms;
using detail::actor_cell;

/// The address this machine reaches `host` from (what other ranks should dial), found by
/// routing a UDP socket towards it; "127.0.0.1" for a loopback rendezvous.
std::string local_address_towards(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), "9", &hints, &found) != 0 || found == nullptr) return "127.0.0.1";
  std::string result = "127.0.0.1";
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t length = sizeof local;
    char text[INET_ADDRSTRLEN] = {};
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0 &&
        inet_ntop(AF_INET, &local.sin_addr, text, sizeof text) != nullptr)
      result = text;
  }
  if (fd >= 0) ::close(fd);
  freeaddrinfo(found);
  return result;
}

bool is_loopback(const std::string& address) {
  return address.rfind("127.", 0) == 0 || address == "localhost";
}

std::chrono::milliseconds remaining(std::chrono::steady_clock::time_point deadline) {
  return std::max(std::chrono::milliseconds(1),
                  std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now()));
}

}  // namespace

void cluster::meet() {
  const auto deadline = std::chrono::steady_clock::now() + options_.rendezvous_timeout;
  process_card mine;
  mine.rank = options_.rank;
  mine.host = options_.hosts[static_cast<std::size_t>(options_.rank)];
  mine.ucx_address = transport_->address();
  mine.pid = static_cast<std::int32_t>(getpid());
  const std::vector<process_card> table =
      options_.rank == 0 ? meet_as_rank_zero(mine, deadline) : meet_as_other_rank(mine, deadline);
  if (options_.rank == 0 && options_.world > 1) {
    // Rank 0's peers are the ranks that said hello; wait until every one introduced itself.
    auto& system = detail::system_of(runtime_);
    caf::scoped_actor self(system);
    std::string failed;
    self->request(actor_cell::unwrap(gateway_), remaining(deadline), peers_in_atom_v,
                  std::map<std::int32_t, caf::actor>{})
        .receive([](bool) {}, [&](caf::error& e) { failed = system.render(e); });
    if (!failed.empty())
      throw rendezvous_error(fmt::format("rendezvous: not every rank connected within {} ({})",
                                         seconds_text(options_.rendezvous_timeout), failed));
  }
  for (const auto& card : table)
    if (card.rank != options_.rank) transport_->connect(card.rank, card.ucx_address);
  caf::anon_send(actor_cell::unwrap(gateway_), tick_atom_v, true);
}

std::vector<process_card> cluster::meet_as_rank_zero(process_card& mine, time_point deadline) {
  const std::string where =
      fmt::format("{}:{}", options_.rendezvous_host, options_.rendezvous_port);
  const caf::actor gateway_handle = actor_cell::unwrap(gateway_);
  try {
    detail::publish(runtime_, gateway_handle,
                    is_loopback(options_.rendezvous_host) ? options_.rendezvous_host : "0.0.0.0",
                    options_.rendezvous_port);
  } catch (const error& e) {
    throw rendezvous_error(
        fmt::format("rendezvous: rank 0 cannot listen on {}: {}", where, e.what()));
  }
  mine.address = options_.rendezvous_host;
  mine.port = options_.rendezvous_port;
  caf::scoped_actor self(detail::system_of(runtime_));
  std::vector<process_card> table;
  bool timed_out = false;
  self->request(gateway_handle, remaining(deadline), gather_atom_v, mine)
      .receive([&](std::vector<process_card>& all) { table = std::move(all); },
               [&](caf::error&) { timed_out = true; });
  observe_writes(self.ptr());
  if (!timed_out) return table;
  std::vector<std::int32_t> absent;
  self->request(gateway_handle, std::chrono::seconds(5), missing_atom_v)
      .receive([&](std::vector<std::int32_t>& ranks) { absent = std::move(ranks); },
               [](caf::error&) {});
  observe_writes(self.ptr());
  std::vector<std::string> named;
  for (int r : absent)
    named.push_back(
        fmt::format("rank {} (host {})", r, options_.hosts[static_cast<std::size_t>(r)]));
  throw rendezvous_error(fmt::format("rendezvous at {}: {} never arrived within {}", where,
                                     fmt::join(named, ", "),
                                     seconds_text(options_.rendezvous_timeout)));
}

std::vector<process_card> cluster::meet_as_other_rank(process_card& mine, time_point deadline) {
  const std::string where =
      fmt::format("{}:{}", options_.rendezvous_host, options_.rendezvous_port);
  const bool loopback = is_loopback(options_.rendezvous_host);
  auto& system = detail::system_of(runtime_);
  // Rank 0 may not listen yet: retry until the deadline.
  caf::actor zero;
  while (!zero) {
    auto found =
        system.middleman().remote_actor(options_.rendezvous_host, options_.rendezvous_port);
    if (found) {
      zero = *found;
      break;
    }
    if (std::chrono::steady_clock::now() + std::chrono::milliseconds(200) > deadline)
      throw rendezvous_error(fmt::format(
          "rendezvous: rank {} cannot reach rank 0 at {} within {}: {}", options_.rank, where,
          seconds_text(options_.rendezvous_timeout), system.render(found.error())));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  mine.address =
      loopback ? std::string("127.0.0.1") : local_address_towards(options_.rendezvous_host);
  const caf::actor gateway_handle = actor_cell::unwrap(gateway_);
  try {
    mine.port = detail::publish(runtime_, gateway_handle, loopback ? "127.0.0.1" : "0.0.0.0", 0);
  } catch (const error& e) {
    throw rendezvous_error(
        fmt::format("rendezvous: rank {} cannot listen: {}", options_.rank, e.what()));
  }
  // The hello goes from the gateway so that rank 0 learns the gateway's handle.
  caf::scoped_actor self(system);
  std::vector<process_card> table;
  std::string problem;
  self->request(gateway_handle, remaining(deadline), hello_atom_v, zero, mine)
      .receive([&](std::vector<process_card>& all) { table = std::move(all); },
               [&](caf::error& e) {
                 problem =
                     e.context().match_elements<std::string>()
                         ? detail::describe_failure(system, e)
                         : fmt::format(
                               "rank 0 at {} did not complete the rendezvous "
                               "within {} ({})",
                               where, seconds_text(options_.rendezvous_timeout), system.render(e));
               });
  if (!problem.empty()) throw rendezvous_error(problem);
  // Rank 0's gateway: the handle remote_actor gave us. It learnt ours from the introduction.
  std::map<std::int32_t, caf::actor> connected{{0, zero}};
  for (const auto& card : table) {
    if (card.rank <= options_.rank) continue;
    auto found = system.middleman().remote_actor(card.address, card.port);
    if (!found)
      throw rendezvous_error(fmt::format("rank {} cannot reach rank {} at {}:{}: {}", options_.rank,
                                         card.rank, card.address, card.port,
                                         system.render(found.error())));
    connected[card.rank] = *found;
  }
  std::string failed;
  self->request(gateway_handle, remaining(deadline), peers_in_atom_v, connected)
      .receive([](bool) {}, [&](caf::error& e) { failed = system.render(e); });
  if (!failed.empty())
    throw rendezvous_error(
        fmt::format("rendezvous: rank {} did not hear from every other rank within {} ({})",
                    options_.rank, seconds_text(options_.rendezvous_timeout), failed));
  return table;
}

}  // namespace troupe
