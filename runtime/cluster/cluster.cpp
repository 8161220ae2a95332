#include "runtime/cluster/cluster.hpp"

#include <fmt/format.h>
#include <caf/all.hpp>

#include <thread>

#include "runtime/actor/blocking_actor.hpp"
#include "runtime/actor/message.hpp"
#include "runtime/cluster/gateway.hpp"

namespace troupe {

namespace {

using namespace gateway_atoms;
using detail::actor_cell;

// CAF serializes the gateways' envelopes and the rendezvous cards between processes.
const bool network_types_registered = [] {
  detail::add_network_types([](caf::actor_system_config& config) {
    config.add_message_type<envelope>("troupe.envelope");
    config.add_message_type<process_card>("troupe.process_card");
    config.add_message_type<std::vector<process_card>>("troupe.process_cards");
  });
  return true;
}();

/// What a process published under a name (cluster::publish), as another process asks for it.
struct publication {
  TROUPE_MESSAGE("troupe.publication");
  bool found = false;
  std::vector<std::uint8_t> bytes;
  auto fields() { return std::tie(found, bytes); }
};

struct publication_request {
  TROUPE_REQUEST("troupe.publication_request", publication);
  std::string name;
  auto fields() { return std::tie(name); }
};

/// The name every process exposes its publications under.
constexpr const char* publications_actor = "troupe.publications";

}  // namespace

struct cluster::board {
  std::mutex lock;
  std::map<std::string, std::vector<std::uint8_t>> published;
  publication find(const std::string& name) {
    std::lock_guard hold(lock);
    auto it = published.find(name);
    return it == published.end() ? publication{} : publication{true, it->second};
  }
};

cluster::cluster(actor_runtime& runtime, cluster_options options)
    : runtime_(runtime), options_(std::move(options)) {
  (void)network_types_registered;
  if (options_.world < 1 || options_.rank < 0 || options_.rank >= options_.world)
    throw rendezvous_error(
        fmt::format("rank {} is not in a world of {}", options_.rank, options_.world));
  if (static_cast<int>(options_.hosts.size()) != options_.world)
    throw rendezvous_error(fmt::format("the topology has {} hosts for a world of {} processes",
                                       options_.hosts.size(), options_.world));
  transport_ = std::make_unique<ucx_transport>(options_.rank, options_.ucx);
  state_ = std::make_shared<gateway_state>();
  state_->options = options_;
  state_->transport = transport_.get();
  auto* st = state_.get();
  state_->names.name_of = [st](const actor_ref& actor) {
    auto it = st->name_of.find(actor_cell::unwrap(actor).address());
    if (it == st->name_of.end()) fail("an actor in a message to another process has no name");
    return it->second;
  };
  state_->names.find = [st](const std::string& name) {
    if (auto it = st->local.find(name); it != st->local.end()) return actor_cell::wrap(it->second);
    if (auto it = st->proxies.find(name); it != st->proxies.end())
      return actor_cell::wrap(it->second.second);
    fail("a message from another process names actor '{}', which this process does not know", name);
  };

  ucx_transport* transport = transport_.get();
  progress_ = actor_cell::wrap(detail::spawn_caf<caf::detached>(
      runtime_, "ucx_progress", [transport](caf::blocking_actor*) { transport->run(); }));
  caf::actor gateway_handle = detail::spawn_caf(runtime_, "gateway", gateway, state_);
  gateway_ = actor_cell::wrap(gateway_handle);
  transport_->on_failure([gateway_handle](int peer, const std::string& why) {
    caf::anon_send(gateway_handle, peer_down_atom_v, static_cast<std::int32_t>(peer),
                   fmt::format("is unreachable over UCX: {}", why));
  });

  // Every process's publications, exposed before the rendezvous: an ask that comes any time
  // after it finds the actor.
  board_ = std::make_shared<board>();
  publications_ = runtime_.spawn("publications", [b = board_](event_actor&) {
    return behavior().on<publication_request>(
        [b](publication_request& request) { return b->find(request.name); });
  });
  expose(publications_actor, publications_);
  try {
    meet();
  } catch (...) {
    leave();
    throw;
  }
}

cluster::~cluster() {
  leave();
}

void cluster::leave() {
  if (!gateway_) return;
  transport_->close();
  std::lock_guard hold(proxies_lock_);
  for (auto& proxy : proxies_) runtime_.stop(proxy);
  if (publications_) runtime_.stop(publications_);
  runtime_.stop(gateway_);
  caf::scoped_actor self(detail::system_of(runtime_));
  // The transport goes right after: nothing may still use it.
  self->wait_for(actor_cell::unwrap(progress_), actor_cell::unwrap(gateway_));
  gateway_ = actor_ref();
  proxies_.clear();
}

const std::string& cluster::host_of(int rank) const {
  return options_.hosts.at(static_cast<std::size_t>(rank));
}

void cluster::expose(const std::string& name, const actor_ref& actor) {
  // Once its behavior is built, the message types its handlers take are registered: a message
  // from another process (which comes after the barrier that follows) finds its type.
  actor_cell::wait_until_ready(actor, std::chrono::minutes(1));
  caf::anon_send(actor_cell::unwrap(gateway_), expose_atom_v, name, actor_cell::unwrap(actor));
}

actor_ref cluster::remote(const std::string& name, int rank) {
  const caf::actor gateway_handle = actor_cell::unwrap(gateway_);
  caf::actor handle = detail::spawn_caf(runtime_, "proxy", proxy, gateway_handle, name,
                                        static_cast<std::int32_t>(rank));
  caf::anon_send(gateway_handle, proxy_atom_v, name, static_cast<std::int32_t>(rank), handle);
  std::lock_guard hold(proxies_lock_);
  proxies_.push_back(actor_cell::wrap(handle));
  return proxies_.back();
}

void cluster::barrier(std::chrono::milliseconds timeout) {
  auto& system = detail::system_of(runtime_);
  caf::scoped_actor self(system);
  std::string failed;
  self->request(actor_cell::unwrap(gateway_), timeout, barrier_atom_v,
                static_cast<std::int32_t>(options_.rank))
      .receive([](bool) {},
               [&](caf::error& e) {
                 failed = e.context().match_elements<std::string>()
                              ? detail::describe_failure(system, e)
                              : fmt::format("no answer within {} ({})", seconds_text(timeout),
                                            system.render(e));
               });
  if (!failed.empty())
    throw rendezvous_error(
        fmt::format("rank {}: not every process got ready: {}", options_.rank, failed));
}

void cluster::publish(const std::string& name, std::vector<std::uint8_t> bytes) {
  std::lock_guard hold(board_->lock);
  board_->published[name] = std::move(bytes);
}

bool cluster::has_published(const std::string& name) const {
  std::lock_guard hold(board_->lock);
  return board_->published.contains(name);
}

std::vector<std::uint8_t> cluster::fetch(const std::string& name, int rank,
                                         std::chrono::milliseconds timeout) {
  if (rank < 0 || rank >= options_.world)
    throw rendezvous_error(fmt::format("fetching '{}' from rank {}: the job has ranks 0 to {}",
                                       name, rank, options_.world - 1));
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + timeout;
  actor_ref source;
  if (rank != options_.rank) {
    std::lock_guard hold(boards_lock_);
    auto it = boards_.find(rank);
    if (it == boards_.end()) it = boards_.emplace(rank, remote(publications_actor, rank)).first;
    source = it->second;
  }
  scoped_actor self(runtime_);
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    publication got;
    if (rank == options_.rank) {
      got = board_->find(name);
    } else {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      try {
        got = self.ask(source, publication_request{name}, fmt::format("fetching '{}'", name),
                       std::max(left, std::chrono::milliseconds(1)));
      } catch (const error& e) {
        // An answer that did not come by the deadline is the timeout below; anything else (the
        // rank died, its actor failed) is said as it is.
        if (std::chrono::steady_clock::now() < deadline)
          throw rendezvous_error(fmt::format("rank {}: fetching '{}' from rank {} ({}) failed: {}",
                                             options_.rank, name, rank, host_of(rank), e.what()));
      }
    }
    if (got.found) return std::move(got.bytes);
    if (std::chrono::steady_clock::now() >= deadline)
      throw rendezvous_error(fmt::format(
          "rank {}: rank {} ({}) did not publish '{}' within {}", options_.rank, rank,
          host_of(rank), name,
          seconds_text(std::chrono::duration_cast<std::chrono::milliseconds>(timeout))));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void cluster::on_failure(failure_handler handler) {
  caf::anon_send(actor_cell::unwrap(gateway_), watch_atom_v, failure_watch{std::move(handler)});
}

void cluster::finish(int code, const std::string& why) {
  caf::scoped_actor self(detail::system_of(runtime_));
  self->request(actor_cell::unwrap(gateway_), std::chrono::seconds(10), finish_atom_v,
                static_cast<std::int32_t>(code), why)
      .receive([](bool) {}, [](caf::error&) {});
}

std::pair<int, std::string> cluster::wait_for_finish() {
  // Only this thread reads the future; the gateway sets it once.
  return state_->finish_promise.get_future().get();
}

}  // namespace troupe
