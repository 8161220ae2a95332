#include "runtime/cluster/cluster.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <deque>
#include <future>
#include <map>
#include <set>
#include <thread>

#include <caf/all.hpp>
#include <caf/io/middleman.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/actor/message_fence.hpp"
#include "runtime/cluster/envelope.hpp"

namespace troupe {

namespace {

using clock_type = std::chrono::steady_clock;

/// A tensor that arrived over UCX for entry `serial` of the queue from `from`.
struct arrived_tensor {
  std::int32_t from = 0;
  std::uint64_t serial = 0;
  std::size_t index = 0;
  tensor value;
};

/// A failure handler on its way to the gateway.
struct failure_watch {
  std::function<void(int, const std::string&)> handler;
};

}  // namespace

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::arrived_tensor)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::failure_watch)

namespace troupe {

namespace {

/// An envelope waiting for its tensors, in its sender's order.
struct incoming {
  std::uint64_t serial = 0;
  envelope letter;
  std::vector<tensor> tensors;
  std::size_t missing = 0;
};

/// A request sent to another process, waiting for its reply.
struct outgoing_request {
  caf::response_promise promise;
  caf::strong_actor_ptr asker;
  std::string shape;
  std::int32_t rank = 0;
  std::string target;
};

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

std::string seconds_text(std::chrono::milliseconds d) {
  return fmt::format("{:g} s", static_cast<double>(d.count()) / 1000.0);
}

}  // namespace

struct cluster::gateway_state {
  cluster_options options;
  std::shared_ptr<const message_codec> codec;
  ucx_transport* transport = nullptr;
  actor_names names;

  std::map<std::string, caf::actor> local;                    // exposed actors by name
  std::map<std::string, std::pair<int, caf::actor>> proxies;  // remote actors by name
  std::map<caf::actor_addr, std::string> name_of;             // both, by address
  std::map<int, caf::actor> peers;                            // other ranks' gateways
  std::map<int, clock_type::time_point> last_heard;
  std::map<int, std::string> dead;
  std::vector<failure_handler> failure_handlers;

  std::uint64_t next_tag = 1, next_request = 1, next_serial = 1;
  std::map<std::uint64_t, outgoing_request> pending;
  std::map<int, std::deque<incoming>> queues;

  // Rendezvous (rank 0): who registered, and who waits for the table.
  std::map<int, process_card> cards;
  std::vector<caf::response_promise> card_waiters;
  caf::response_promise gathered;
  caf::strong_actor_ptr gathered_asker;  // rank 0's meet(): the table's writes go to it
  bool gathering = false;
  caf::response_promise peers_complete;
  bool awaiting_peers = false;
  // Barrier (rank 0 counts, the others wait).
  std::set<int> at_barrier;
  std::vector<caf::response_promise> barrier_waiters;
  // Leaving (other ranks).
  std::promise<std::pair<int, std::string>> finish_promise;
  bool finish_set = false;

  std::string describe(int rank) const {
    std::vector<std::string> actors;
    for (const auto& [name, where] : proxies)
      if (where.first == rank) actors.push_back(name);
    const std::string host =
        rank < static_cast<int>(options.hosts.size()) ? options.hosts[rank] : "?";
    return actors.empty()
               ? fmt::format("rank {} (host {})", rank, host)
               : fmt::format("rank {} (host {}: {})", rank, host, fmt::join(actors, ", "));
  }

  void set_finish(int code, const std::string& why) {
    if (finish_set) return;
    finish_set = true;
    finish_promise.set_value({code, why});
  }
};

namespace {

using state_ptr = std::shared_ptr<cluster::gateway_state>;

void send_envelope(instrumented_actor* self, cluster::gateway_state& st, int rank, envelope letter,
                   std::vector<tensor> tensors) {
  auto peer = st.peers.find(rank);
  if (peer == st.peers.end()) return;
  letter.from = st.options.rank;
  for (auto& t : tensors) {
    const std::uint64_t tag = st.next_tag++;
    st.transport->send(rank, tag, std::move(t));
    letter.tensors.push_back(tag);
  }
  self->send(peer->second, std::move(letter));
}

/// Encodes `message` with `shape`; returns the envelope (body filled) and its tensors.
std::pair<envelope, std::vector<tensor>> encode(const cluster::gateway_state& st,
                                                const message_codec::shape& shape,
                                                const caf::message& message) {
  wire_writer writer(&st.names);
  shape.write(writer, message);
  envelope letter;
  letter.type = shape.name;
  letter.body = std::move(writer.body());
  return {std::move(letter), std::move(writer.tensors())};
}

void peer_down(instrumented_actor* self, cluster::gateway_state& st, int rank,
               const std::string& why) {
  if (rank == st.options.rank || st.dead.count(rank) != 0) return;
  const std::string message = fmt::format("{} {}", st.describe(rank), why);
  st.dead[rank] = message;
  for (auto it = st.pending.begin(); it != st.pending.end();) {
    if (it->second.rank == rank) {
      publish_writes_to(it->second.asker);
      it->second.promise.deliver(actor_failure(message));
      it = st.pending.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& waiter : st.barrier_waiters) waiter.deliver(actor_failure(message));
  st.barrier_waiters.clear();
  if (st.options.rank != 0 && rank == 0) st.set_finish(5, message);
  for (auto& handler : st.failure_handlers) handler(rank, message);
  (void)self;
}

void deliver(instrumented_actor* self, cluster::gateway_state& st, incoming& entry) {
  envelope& letter = entry.letter;
  const int from = letter.from;
  const auto kind = static_cast<envelope_kind>(letter.kind);
  if (kind == envelope_kind::failure) {
    auto it = st.pending.find(letter.request);
    if (it == st.pending.end()) return;
    publish_writes_to(it->second.asker);
    it->second.promise.deliver(actor_failure(std::string(letter.body.begin(), letter.body.end())));
    st.pending.erase(it);
    return;
  }
  const message_codec::shape* shape = st.codec->find(letter.type);
  caf::message message;
  std::string problem;
  if (shape == nullptr) {
    problem = fmt::format("rank {} does not know the message shape '{}' that rank {} sent",
                          st.options.rank, letter.type, from);
  } else {
    try {
      wire_reader reader(letter.body, std::move(entry.tensors), &st.names);
      message = shape->read(reader);
      if (!reader.finished()) fail("a '{}' message has bytes left over", letter.type);
    } catch (const std::exception& e) {
      problem = fmt::format("a '{}' message from rank {}: {}", letter.type, from, e.what());
    }
  }
  if (kind == envelope_kind::reply) {
    auto it = st.pending.find(letter.request);
    if (it == st.pending.end()) return;
    publish_writes_to(it->second.asker);
    if (problem.empty())
      it->second.promise.deliver(std::move(message));
    else
      it->second.promise.deliver(actor_failure(problem));
    st.pending.erase(it);
    return;
  }
  auto target = st.local.find(letter.target);
  if (problem.empty() && target == st.local.end())
    problem = fmt::format("rank {} has no actor named '{}'", st.options.rank, letter.target);
  if (kind == envelope_kind::one_way) {
    if (problem.empty())
      caf::anon_send(target->second, std::move(message));
    else
      fmt::print(stderr, "troupe: dropped a message: {}\n", problem);
    return;
  }
  // A request: ask the local actor, send its reply (or failure) back.
  const std::uint64_t id = letter.request;
  auto fail_back = [self, &st, from, id](const std::string& text) {
    envelope failure;
    failure.kind = static_cast<std::uint8_t>(envelope_kind::failure);
    failure.request = id;
    failure.type = "failure";
    failure.body.assign(text.begin(), text.end());
    send_envelope(self, st, from, std::move(failure), {});
  };
  if (!problem.empty()) {
    fail_back(problem);
    return;
  }
  const message_codec::shape* reply_shape = st.codec->reply_of(shape->name);
  shape->ask(
      self, target->second, std::move(message),
      [self, &st, from, id, reply_shape](caf::message reply) {
        auto [answer, tensors] = encode(st, *reply_shape, reply);
        answer.kind = static_cast<std::uint8_t>(envelope_kind::reply);
        answer.request = id;
        send_envelope(self, st, from, std::move(answer), std::move(tensors));
      },
      [self, fail_back](const caf::error& e) { fail_back(describe_failure(self->system(), e)); });
}

/// Rank 0: once every rank has registered (and rank 0 gathers), everyone gets the table.
void hand_out_table_when_complete(cluster::gateway_state& st) {
  if (!st.gathering || static_cast<int>(st.cards.size()) != st.options.world) return;
  std::vector<process_card> table;
  for (auto& [rank, card] : st.cards) table.push_back(card);
  for (auto& waiter : st.card_waiters) waiter.deliver(table);
  st.card_waiters.clear();
  publish_writes_to(st.gathered_asker);
  st.gathered.deliver(table);
}

/// Delivers the envelopes from `from` whose tensors are all here, in order.
void pump(instrumented_actor* self, cluster::gateway_state& st, int from) {
  auto& queue = st.queues[from];
  while (!queue.empty() && queue.front().missing == 0) {
    incoming entry = std::move(queue.front());
    queue.pop_front();
    deliver(self, st, entry);
  }
}

caf::behavior gateway(instrumented_actor* self, state_ptr st) {
  self->set_down_handler([self, st](caf::down_msg& down) {
    for (const auto& [rank, peer] : st->peers)
      if (peer.address() == down.source)
        peer_down(self, *st, rank,
                  "is gone: its connection was lost (the process died or its host went away)");
  });
  return {
      // Local actors and proxies.
      [st](atoms::expose_atom, const std::string& name, const caf::actor& actor) {
        st->local[name] = actor;
        st->name_of[actor.address()] = name;
      },
      [st](atoms::proxy_atom, const std::string& name, std::int32_t rank, const caf::actor& proxy) {
        st->proxies[name] = {rank, proxy};
        st->name_of[proxy.address()] = name;
      },
      [st](atoms::watch_atom, failure_watch& watch) {
        st->failure_handlers.push_back(std::move(watch.handler));
      },
      // A proxy's message for another process (delegated: the reply goes to the asker).
      [self, st](atoms::forward_atom, const std::string& target, std::int32_t rank,
                 caf::message& message) {
        const message_codec::shape* shape = st->codec->find(message);
        const bool is_request = self->current_mailbox_element()->mid.is_request();
        auto dead = st->dead.find(rank);
        std::string problem;
        if (dead != st->dead.end())
          problem = dead->second;
        else if (shape == nullptr)
          problem = fmt::format(
              "cannot send {} to {} in another process: the message has no wire format "
              "(register its shape in the message codec)",
              caf::to_string(message), target);
        if (!problem.empty()) {
          if (is_request)
            self->make_response_promise().deliver(actor_failure(problem));
          else
            fmt::print(stderr, "troupe: dropped a message to {}: {}\n", target, problem);
          return;
        }
        auto [letter, tensors] = encode(*st, *shape, message);
        letter.target = target;
        if (shape->request && is_request) {
          const std::uint64_t id = st->next_request++;
          st->pending[id] = {self->make_response_promise(), self->current_sender(), shape->name,
                             rank, target};
          letter.kind = static_cast<std::uint8_t>(envelope_kind::request);
          letter.request = id;
        } else {
          letter.kind = static_cast<std::uint8_t>(envelope_kind::one_way);
        }
        send_envelope(self, *st, rank, std::move(letter), std::move(tensors));
      },
      // Another process's envelope: wait for its tensors, then deliver in order.
      [self, st](envelope& letter) {
        const int from = letter.from;
        incoming entry;
        entry.serial = st->next_serial++;
        entry.tensors.resize(letter.tensors.size());
        for (std::size_t i = 0; i < letter.tensors.size(); ++i) {
          if (letter.tensors[i] == 0) continue;
          ++entry.missing;
          caf::actor me = caf::actor_cast<caf::actor>(self);
          st->transport->expect(from, letter.tensors[i],
                                [me, from, serial = entry.serial, i](tensor value) {
                                  caf::anon_send(me, atoms::arrived_atom_v,
                                                 arrived_tensor{from, serial, i, std::move(value)});
                                });
        }
        entry.letter = std::move(letter);
        st->queues[from].push_back(std::move(entry));
        pump(self, *st, from);
      },
      [self, st](atoms::arrived_atom, arrived_tensor& arrival) {
        for (auto& entry : st->queues[arrival.from])
          if (entry.serial == arrival.serial) {
            entry.tensors[arrival.index] = std::move(arrival.value);
            --entry.missing;
            break;
          }
        pump(self, *st, arrival.from);
      },
      // Failures and heartbeats.
      [self, st](atoms::peer_down_atom, std::int32_t rank, const std::string& why) {
        peer_down(self, *st, rank, why);
      },
      [st](atoms::ping_atom, std::int32_t from) { st->last_heard[from] = clock_type::now(); },
      [self, st](atoms::tick_atom) {
        const auto now = clock_type::now();
        for (const auto& [rank, peer] : st->peers) {
          if (st->dead.count(rank) != 0) continue;
          self->send(peer, atoms::ping_atom_v, static_cast<std::int32_t>(st->options.rank));
          auto heard = st->last_heard.find(rank);
          if (heard != st->last_heard.end() && now - heard->second > st->options.heartbeat_timeout)
            peer_down(self, *st, rank,
                      fmt::format("stopped answering: no heartbeat for {}",
                                  seconds_text(st->options.heartbeat_timeout)));
        }
        self->delayed_send(self, st->options.heartbeat_interval, atoms::tick_atom_v);
      },
      // Rendezvous, rank 0: cards come in; the table goes out when all are here.
      [self, st](atoms::hello_atom, process_card& card) {
        const int rank = card.rank;
        auto promise = self->make_response_promise();
        if (rank <= 0 || rank >= st->options.world || st->cards.count(rank) != 0) {
          promise.deliver(actor_failure(
              rank <= 0 || rank >= st->options.world
                  ? fmt::format("rendezvous: a process says it is rank {} of a world of {}", rank,
                                st->options.world)
                  : fmt::format("rendezvous: two processes say they are rank {}", rank)));
          return;
        }
        // Its gateway's handle comes with its introduction (peers_in).
        st->cards[rank] = std::move(card);
        st->card_waiters.push_back(promise);
        hand_out_table_when_complete(*st);
      },
      // Rendezvous, the other ranks: the hello goes from the gateway, so that rank 0 learns it.
      [self](atoms::hello_atom, const caf::actor& zero, process_card& card) {
        auto done = self->make_response_promise();
        self->request(zero, caf::infinite, atoms::hello_atom_v, std::move(card))
            .then([done](std::vector<process_card>& table) mutable { done.deliver(table); },
                  [done](caf::error& e) mutable { done.deliver(std::move(e)); });
      },
      [self, st](atoms::gather_atom, process_card& mine) {
        st->cards[0] = std::move(mine);
        st->gathering = true;
        st->gathered = self->make_response_promise();
        st->gathered_asker = self->current_sender();
        hand_out_table_when_complete(*st);
      },
      [self, st](atoms::missing_atom) {
        std::vector<std::int32_t> absent;
        for (int r = 1; r < st->options.world; ++r)
          if (st->cards.count(r) == 0) absent.push_back(r);
        return replying(self, absent);
      },
      // Direct connections: a rank below this one introduces its gateway.
      [self, st](atoms::introduce_atom, std::int32_t rank) {
        st->peers[rank] = caf::actor_cast<caf::actor>(self->current_sender());
        if (st->awaiting_peers && static_cast<int>(st->peers.size()) == st->options.world - 1) {
          st->awaiting_peers = false;
          st->peers_complete.deliver(true);
        }
      },
      [self, st](atoms::peers_in_atom, std::map<std::int32_t, caf::actor>& connected) {
        for (auto& [rank, peer] : connected) {
          st->peers[rank] = peer;
          self->send(peer, atoms::introduce_atom_v, static_cast<std::int32_t>(st->options.rank));
        }
        auto done = self->make_response_promise();
        if (static_cast<int>(st->peers.size()) == st->options.world - 1) {
          done.deliver(true);
          return;
        }
        st->awaiting_peers = true;
        st->peers_complete = done;
      },
      // Every peer is known: watch them and start the heartbeats.
      [self, st](atoms::tick_atom, bool start) {
        if (!start) return;
        const auto now = clock_type::now();
        for (const auto& [rank, peer] : st->peers) {
          self->monitor(peer);
          st->last_heard[rank] = now;
        }
        self->send(self, atoms::tick_atom_v);
      },
      // Barrier: everyone reports to rank 0, which answers all at once.
      [self, st](atoms::barrier_atom, std::int32_t rank) {
        auto done = self->make_response_promise();
        if (!st->dead.empty()) {
          // A process died before everyone got here: nobody will.
          done.deliver(actor_failure(st->dead.begin()->second));
          return;
        }
        if (st->options.rank != 0) {
          // Ours: ask rank 0; its answer (or its death) answers our caller.
          auto zero = st->peers.find(0);
          if (zero == st->peers.end()) {
            done.deliver(actor_failure("rank 0 is not connected"));
            return;
          }
          st->barrier_waiters.push_back(done);
          self->request(zero->second, caf::infinite, atoms::barrier_atom_v, rank)
              .then(
                  [st](bool) {
                    for (auto& waiter : st->barrier_waiters) waiter.deliver(true);
                    st->barrier_waiters.clear();
                  },
                  [st](caf::error& e) {
                    for (auto& waiter : st->barrier_waiters) waiter.deliver(e);
                    st->barrier_waiters.clear();
                  });
          return;
        }
        st->at_barrier.insert(rank);
        st->barrier_waiters.push_back(done);
        if (static_cast<int>(st->at_barrier.size()) == st->options.world) {
          for (auto& waiter : st->barrier_waiters) waiter.deliver(true);
          st->barrier_waiters.clear();
          st->at_barrier.clear();
        }
      },
      // Leaving: rank 0 tells the others; they answer, then their owner leaves.
      [self, st](atoms::finish_atom, std::int32_t code, const std::string& why) {
        auto done = self->make_response_promise();
        if (st->options.rank != 0) {
          st->set_finish(code, why);
          done.deliver(true);
          return;
        }
        auto remaining = std::make_shared<int>(0);
        for (const auto& [rank, peer] : st->peers)
          if (st->dead.count(rank) == 0) ++*remaining;
        if (*remaining == 0) {
          done.deliver(true);
          return;
        }
        for (const auto& [rank, peer] : st->peers) {
          if (st->dead.count(rank) != 0) continue;
          self->request(peer, std::chrono::seconds(5), atoms::finish_atom_v, code, why)
              .then(
                  [done, remaining](bool) mutable {
                    if (--*remaining == 0) done.deliver(true);
                  },
                  [done, remaining](caf::error&) mutable {
                    if (--*remaining == 0) done.deliver(true);
                  });
        }
      },
  };
}

/// A stand-in for an actor of another process: everything it receives goes to the gateway,
/// which answers the original sender (delegation).
caf::behavior proxy(instrumented_actor* self, caf::actor gateway, std::string name,
                    std::int32_t rank) {
  self->set_default_handler(
      [gateway, name, rank](caf::scheduled_actor* me,
                            caf::message_view& view) -> caf::result<caf::message> {
        auto* actor = static_cast<instrumented_actor*>(me);
        actor->delegate(gateway, atoms::forward_atom_v, name, rank, view.move_content_to_message());
        return caf::message{};
      });
  return {[](atoms::proxy_atom) {}};
}

}  // namespace

cluster::cluster(actor_runtime& runtime, cluster_options options,
                 std::shared_ptr<const message_codec> codec)
    : runtime_(runtime), options_(std::move(options)), codec_(std::move(codec)) {
  if (options_.world < 1 || options_.rank < 0 || options_.rank >= options_.world)
    throw rendezvous_error(
        fmt::format("rank {} is not in a world of {}", options_.rank, options_.world));
  if (static_cast<int>(options_.hosts.size()) != options_.world)
    throw rendezvous_error(fmt::format("the topology has {} hosts for a world of {} processes",
                                       options_.hosts.size(), options_.world));
  transport_ = std::make_unique<ucx_transport>(options_.rank, options_.ucx);
  state_ = std::make_shared<gateway_state>();
  state_->options = options_;
  state_->codec = codec_;
  state_->transport = transport_.get();
  auto* st = state_.get();
  state_->names.name_of = [st](const caf::actor& actor) {
    auto it = st->name_of.find(actor.address());
    if (it == st->name_of.end()) fail("an actor in a message to another process has no name");
    return it->second;
  };
  state_->names.find = [st](const std::string& name) {
    if (auto it = st->local.find(name); it != st->local.end()) return it->second;
    if (auto it = st->proxies.find(name); it != st->proxies.end()) return it->second.second;
    fail("a message from another process names actor '{}', which this process does not know", name);
  };

  ucx_transport* transport = transport_.get();
  progress_ = runtime_.spawn_detached("ucx_progress",
                                      [transport](caf::blocking_actor*) { transport->run(); });
  gateway_ = runtime_.spawn("gateway", gateway, state_);
  caf::actor gateway_handle = gateway_;
  transport_->on_failure([gateway_handle](int peer, const std::string& why) {
    caf::anon_send(gateway_handle, atoms::peer_down_atom_v, static_cast<std::int32_t>(peer),
                   fmt::format("is unreachable over UCX: {}", why));
  });

  try {
    meet();
  } catch (...) {
    leave();
    throw;
  }
}

void cluster::meet() {
  const auto deadline = clock_type::now() + options_.rendezvous_timeout;
  const std::string where =
      fmt::format("{}:{}", options_.rendezvous_host, options_.rendezvous_port);
  const bool loopback = is_loopback(options_.rendezvous_host);
  process_card mine;
  mine.rank = options_.rank;
  mine.host = options_.hosts[static_cast<std::size_t>(options_.rank)];
  mine.ucx_address = transport_->address();
  mine.pid = static_cast<std::int32_t>(getpid());
  caf::scoped_actor self(runtime_.system());
  auto remaining = [&] {
    return std::max(
        std::chrono::milliseconds(1),
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock_type::now()));
  };

  std::vector<process_card> table;
  if (options_.rank == 0) {
    try {
      runtime_.publish(gateway_, loopback ? options_.rendezvous_host : "0.0.0.0",
                       options_.rendezvous_port);
    } catch (const error& e) {
      throw rendezvous_error(
          fmt::format("rendezvous: rank 0 cannot listen on {}: {}", where, e.what()));
    }
    mine.address = options_.rendezvous_host;
    mine.port = options_.rendezvous_port;
    bool timed_out = false;
    self->request(gateway_, remaining(), atoms::gather_atom_v, mine)
        .receive([&](std::vector<process_card>& all) { table = std::move(all); },
                 [&](caf::error&) { timed_out = true; });
    observe_writes(self.ptr());
    if (timed_out) {
      std::vector<std::int32_t> absent;
      self->request(gateway_, std::chrono::seconds(5), atoms::missing_atom_v)
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
  } else {
    // Rank 0 may not listen yet: retry until the deadline.
    caf::actor zero;
    std::string last_error;
    while (!zero) {
      auto found = runtime_.system().middleman().remote_actor(options_.rendezvous_host,
                                                              options_.rendezvous_port);
      if (found) {
        zero = *found;
        break;
      }
      last_error = runtime_.system().render(found.error());
      if (clock_type::now() + std::chrono::milliseconds(200) > deadline)
        throw rendezvous_error(fmt::format(
            "rendezvous: rank {} cannot reach rank 0 at {} within "
            "{}: {}",
            options_.rank, where, seconds_text(options_.rendezvous_timeout), last_error));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    mine.address =
        loopback ? std::string("127.0.0.1") : local_address_towards(options_.rendezvous_host);
    try {
      mine.port = runtime_.publish(gateway_, loopback ? "127.0.0.1" : "0.0.0.0", 0);
    } catch (const error& e) {
      throw rendezvous_error(
          fmt::format("rendezvous: rank {} cannot listen: {}", options_.rank, e.what()));
    }
    // The hello goes from the gateway so that rank 0 learns the gateway's handle.
    std::string problem;
    self->request(gateway_, remaining(), atoms::hello_atom_v, zero, mine)
        .receive([&](std::vector<process_card>& all) { table = std::move(all); },
                 [&](caf::error& e) {
                   problem = e.context().match_elements<std::string>()
                                 ? describe_failure(runtime_.system(), e)
                                 : fmt::format(
                                       "rank 0 at {} did not complete the rendezvous "
                                       "within {} ({})",
                                       where, seconds_text(options_.rendezvous_timeout),
                                       runtime_.system().render(e));
                 });
    if (!problem.empty()) throw rendezvous_error(problem);
    // Rank 0's gateway: the handle remote_actor gave us. It learnt ours from the introduction.
    std::map<std::int32_t, caf::actor> connected{{0, zero}};
    for (const auto& card : table) {
      if (card.rank <= options_.rank) continue;
      auto found = runtime_.system().middleman().remote_actor(card.address, card.port);
      if (!found)
        throw rendezvous_error(fmt::format("rank {} cannot reach rank {} at {}:{}: {}",
                                           options_.rank, card.rank, card.address, card.port,
                                           runtime_.system().render(found.error())));
      connected[card.rank] = *found;
    }
    std::string failed;
    self->request(gateway_, remaining(), atoms::peers_in_atom_v, connected)
        .receive([](bool) {}, [&](caf::error& e) { failed = runtime_.system().render(e); });
    if (!failed.empty())
      throw rendezvous_error(
          fmt::format("rendezvous: rank {} did not hear from every other rank within {} ({})",
                      options_.rank, seconds_text(options_.rendezvous_timeout), failed));
  }
  if (options_.rank == 0 && options_.world > 1) {
    // Rank 0's peers are the ranks that said hello; wait until every one introduced itself.
    std::string failed;
    self->request(gateway_, remaining(), atoms::peers_in_atom_v,
                  std::map<std::int32_t, caf::actor>{})
        .receive([](bool) {}, [&](caf::error& e) { failed = runtime_.system().render(e); });
    if (!failed.empty())
      throw rendezvous_error(fmt::format("rendezvous: not every rank connected within {} ({})",
                                         seconds_text(options_.rendezvous_timeout), failed));
  }
  for (const auto& card : table)
    if (card.rank != options_.rank) transport_->connect(card.rank, card.ucx_address);
  caf::anon_send(gateway_, atoms::tick_atom_v, true);
}

cluster::~cluster() {
  leave();
}

void cluster::leave() {
  if (!gateway_) return;
  transport_->close();
  for (auto& proxy : proxies_) caf::anon_send_exit(proxy, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(gateway_, caf::exit_reason::user_shutdown);
  caf::scoped_actor self(runtime_.system());
  self->wait_for(progress_);
  gateway_ = caf::actor();
  proxies_.clear();
}

const std::string& cluster::host_of(int rank) const {
  return options_.hosts.at(static_cast<std::size_t>(rank));
}

void cluster::expose(const std::string& name, const caf::actor& actor) {
  caf::anon_send(gateway_, atoms::expose_atom_v, name, actor);
}

caf::actor cluster::remote(const std::string& name, int rank) {
  caf::actor handle =
      runtime_.spawn("proxy", proxy, gateway_, name, static_cast<std::int32_t>(rank));
  caf::anon_send(gateway_, atoms::proxy_atom_v, name, static_cast<std::int32_t>(rank), handle);
  proxies_.push_back(handle);
  return handle;
}

void cluster::barrier(std::chrono::milliseconds timeout) {
  caf::scoped_actor self(runtime_.system());
  std::string failed;
  self->request(gateway_, timeout, atoms::barrier_atom_v, static_cast<std::int32_t>(options_.rank))
      .receive([](bool) {},
               [&](caf::error& e) {
                 failed = e.context().match_elements<std::string>()
                              ? describe_failure(runtime_.system(), e)
                              : fmt::format("no answer within {} ({})", seconds_text(timeout),
                                            runtime_.system().render(e));
               });
  if (!failed.empty())
    throw rendezvous_error(
        fmt::format("rank {}: not every process got ready: {}", options_.rank, failed));
}

void cluster::on_failure(failure_handler handler) {
  caf::anon_send(gateway_, atoms::watch_atom_v, failure_watch{std::move(handler)});
}

void cluster::finish(int code, const std::string& why) {
  caf::scoped_actor self(runtime_.system());
  self->request(gateway_, std::chrono::seconds(10), atoms::finish_atom_v,
                static_cast<std::int32_t>(code), why)
      .receive([](bool) {}, [](caf::error&) {});
}

std::pair<int, std::string> cluster::wait_for_finish() {
  // Only this thread reads the future; the gateway sets it once.
  return state_->finish_promise.get_future().get();
}

}  // namespace troupe
