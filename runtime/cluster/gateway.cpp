#include "runtime/cluster/gateway.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <caf/all.hpp>

namespace troupe {

using namespace gateway_atoms;

std::string seconds_text(std::chrono::milliseconds d) {
  return fmt::format("{:g} s", static_cast<double>(d.count()) / 1000.0);
}

std::string cluster::gateway_state::describe(int rank) const {
  std::vector<std::string> actors;
  for (const auto& [name, where] : proxies)
    if (where.first == rank) actors.push_back(name);
  const std::string host =
      rank < static_cast<int>(options.hosts.size()) ? options.hosts[rank] : "?";
  return actors.empty() ? fmt::format("rank {} (host {})", rank, host)
                        : fmt::format("rank {} (host {}: {})", rank, host, fmt::join(actors, ", "));
}

void cluster::gateway_state::set_finish(int code, const std::string& why) {
  if (finish_set) return;
  finish_set = true;
  finish_promise.set_value({code, why});
}

namespace {

using detail::actor_failure;
using detail::instrumented_actor;
using state = cluster::gateway_state;

/// `value` as the reply to the current request, after the gateway's writes are published to
/// the asker (message_fence.hpp).
template <class T>
T replying(instrumented_actor* self, T value) {
  publish_writes_to(self->current_sender());
  return value;
}

void send_envelope(instrumented_actor* self, state& st, int rank, envelope letter,
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

/// Writes `message` in its wire format; returns the envelope (body filled) and its tensors.
std::pair<envelope, std::vector<tensor>> encode(const state& st, const message_box& message) {
  wire_writer writer(&st.names);
  message.type()->write(writer, message.data());
  envelope letter;
  letter.type = std::string(message.type()->name);
  letter.body = std::move(writer.body());
  return {std::move(letter), std::move(writer.tensors())};
}

/// Reads a message of `type` from `entry`; throws troupe::error naming what is wrong.
message_box decode(const state& st, incoming_envelope& entry, const message_type_info& type) {
  wire_reader reader(entry.letter.body, std::move(entry.tensors), &st.names);
  message_box message(&type, type.read(reader));
  if (!reader.finished()) fail("a '{}' message has bytes left over", type.name);
  return message;
}

void peer_down(state& st, int rank, const std::string& why) {
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
}

/// The reply (or failure) to one of our requests came back.
void complete_request(state& st, incoming_envelope& entry) {
  const envelope& letter = entry.letter;
  auto it = st.pending.find(letter.request);
  if (it == st.pending.end()) return;
  outgoing_request request = std::move(it->second);
  st.pending.erase(it);
  // NOTES: the writes are published to the asker after the reply is decoded (the decoded
  // message is written here and read there), just before each deliver.
  if (static_cast<envelope_kind>(letter.kind) == envelope_kind::failure) {
    publish_writes_to(request.asker);
    request.promise.deliver(actor_failure(std::string(letter.body.begin(), letter.body.end())));
    return;
  }
  try {
    if (request.reply_type == nullptr || letter.type != request.reply_type->name)
      fail("a '{}' reply where '{}' was expected", letter.type,
           request.reply_type ? request.reply_type->name : std::string_view("none"));
    message_box reply = decode(st, entry, *request.reply_type);
    publish_writes_to(request.asker);
    request.promise.deliver(std::move(reply));
  } catch (const std::exception& e) {
    publish_writes_to(request.asker);
    request.promise.deliver(actor_failure(
        fmt::format("the reply of {} (rank {}): {}", request.target, request.rank, e.what())));
  }
}

/// Another process's message for one of our actors, or its request of one.
void deliver_to_local(instrumented_actor* self, state& st, incoming_envelope& entry) {
  const envelope& letter = entry.letter;
  const int from = letter.from;
  const std::uint64_t id = letter.request;
  const bool request = static_cast<envelope_kind>(letter.kind) == envelope_kind::request;
  auto fail_back = [self, &st, from, id](const std::string& text) {
    envelope failure;
    failure.kind = static_cast<std::uint8_t>(envelope_kind::failure);
    failure.request = id;
    failure.type = "failure";
    failure.body.assign(text.begin(), text.end());
    send_envelope(self, st, from, std::move(failure), {});
  };
  message_box message;
  caf::actor target;
  try {
    const message_type_info* type = find_message_type(letter.type);
    if (type == nullptr)
      fail("rank {} does not know the message '{}' (no code of its program declares it)",
           st.options.rank, letter.type);
    message = decode(st, entry, *type);
    auto found = st.local.find(letter.target);
    if (found == st.local.end())
      fail("rank {} has no actor named '{}'", st.options.rank, letter.target);
    target = found->second;
  } catch (const std::exception& e) {
    const std::string problem =
        fmt::format("a '{}' message from rank {}: {}", letter.type, from, e.what());
    if (request)
      fail_back(problem);
    else
      fmt::print(stderr, "troupe: dropped a message: {}\n", problem);
    return;
  }
  if (!request) {
    caf::anon_send(target, std::move(message));
    return;
  }
  self->request(target, caf::infinite, std::move(message))
      .then(
          [self, &st, from, id, fail_back](message_box& reply) {
            // A reply that cannot travel fails the request instead of the gateway.
            try {
              auto [answer, tensors] = encode(st, reply);
              answer.kind = static_cast<std::uint8_t>(envelope_kind::reply);
              answer.request = id;
              send_envelope(self, st, from, std::move(answer), std::move(tensors));
            } catch (const std::exception& e) {
              fail_back(fmt::format("the reply cannot go back to rank {}: {}", from, e.what()));
            }
          },
          [self, fail_back](caf::error& e) {
            fail_back(detail::describe_failure(self->system(), e));
          });
}

/// Delivers the envelopes from `from` whose tensors are all here, in order.
void pump(instrumented_actor* self, state& st, int from) {
  auto& queue = st.queues[from];
  while (!queue.empty() && queue.front().missing == 0) {
    incoming_envelope entry = std::move(queue.front());
    queue.pop_front();
    const auto kind = static_cast<envelope_kind>(entry.letter.kind);
    if (kind == envelope_kind::reply || kind == envelope_kind::failure)
      complete_request(st, entry);
    else
      deliver_to_local(self, st, entry);
  }
}

/// A proxy's message for another process (delegated: the reply goes to the asker).
void forward(instrumented_actor* self, state& st, const std::string& target, std::int32_t rank,
             caf::message& message) {
  const bool is_request = self->current_mailbox_element()->mid.is_request();
  const message_box* box =
      message.match_elements<message_box>() ? &message.get_as<message_box>(0) : nullptr;
  std::string problem;
  if (auto dead = st.dead.find(rank); dead != st.dead.end())
    problem = dead->second;
  else if (box == nullptr || !*box)
    problem = fmt::format(
        "cannot send {} to {} in another process: only troupe messages "
        "(message.hpp) cross processes",
        caf::to_string(message), target);
  if (!problem.empty()) {
    if (is_request)
      self->make_response_promise().deliver(actor_failure(problem));
    else
      fmt::print(stderr, "troupe: dropped a message to {}: {}\n", target, problem);
    return;
  }
  std::uint64_t id = 0;
  try {
    auto [letter, tensors] = encode(st, *box);
    letter.target = target;
    if (is_request) {
      id = st.next_request++;
      // The asker first: make_response_promise() moves the current sender into the promise.
      caf::strong_actor_ptr asker = self->current_sender();
      st.pending[id] = {self->make_response_promise(), std::move(asker), box->type()->reply, rank,
                        target};
      letter.kind = static_cast<std::uint8_t>(envelope_kind::request);
      letter.request = id;
    } else {
      letter.kind = static_cast<std::uint8_t>(envelope_kind::one_way);
    }
    send_envelope(self, st, rank, std::move(letter), std::move(tensors));
  } catch (const std::exception& e) {
    problem =
        fmt::format("cannot send a '{}' message to {}: {}", box->type()->name, target, e.what());
    if (auto pending = st.pending.find(id); id != 0 && pending != st.pending.end()) {
      publish_writes_to(pending->second.asker);
      pending->second.promise.deliver(actor_failure(problem));
      st.pending.erase(pending);
    } else if (is_request) {
      self->make_response_promise().deliver(actor_failure(problem));
    } else {
      fmt::print(stderr, "troupe: dropped a message: {}\n", problem);
    }
  }
}

/// Another process's envelope: wait for its tensors, then deliver in order.
void receive_envelope(instrumented_actor* self, state& st, envelope& letter) {
  const int from = letter.from;
  incoming_envelope entry;
  entry.serial = st.next_serial++;
  entry.tensors.resize(letter.tensors.size());
  caf::actor me = caf::actor_cast<caf::actor>(self);
  for (std::size_t i = 0; i < letter.tensors.size(); ++i) {
    if (letter.tensors[i] == 0) continue;
    ++entry.missing;
    st.transport->expect(
        from, letter.tensors[i], [me, from, serial = entry.serial, i](tensor value) {
          caf::anon_send(me, arrived_atom_v, arrived_tensor{from, serial, i, std::move(value)});
        });
  }
  entry.letter = std::move(letter);
  st.queues[from].push_back(std::move(entry));
  pump(self, st, from);
}

caf::message_handler routing(instrumented_actor* self, gateway_state_ptr st) {
  return {
      [st](expose_atom, const std::string& name, const caf::actor& actor) {
        st->local[name] = actor;
        st->name_of[actor.address()] = name;
      },
      [st](proxy_atom, const std::string& name, std::int32_t rank, const caf::actor& proxy) {
        st->proxies[name] = {rank, proxy};
        st->name_of[proxy.address()] = name;
      },
      [self, st](forward_atom, const std::string& target, std::int32_t rank,
                 caf::message& message) { forward(self, *st, target, rank, message); },
      [self, st](envelope& letter) { receive_envelope(self, *st, letter); },
      [self, st](arrived_atom, arrived_tensor& arrival) {
        for (auto& entry : st->queues[arrival.from])
          if (entry.serial == arrival.serial) {
            entry.tensors[arrival.index] = std::move(arrival.value);
            --entry.missing;
            break;
          }
        pump(self, *st, arrival.from);
      },
  };
}

caf::message_handler liveness(instrumented_actor* self, gateway_state_ptr st) {
  return {
      [st](watch_atom, failure_watch& watch) {
        st->failure_handlers.push_back(std::move(watch.handler));
      },
      [st](peer_down_atom, std::int32_t rank, const std::string& why) {
        peer_down(*st, rank, why);
      },
      [st](ping_atom, std::int32_t from) { st->last_heard[from] = gateway_clock::now(); },
      [self, st](tick_atom) {
        const auto now = gateway_clock::now();
        for (const auto& [rank, peer] : st->peers) {
          if (st->dead.count(rank) != 0) continue;
          self->send(peer, ping_atom_v, static_cast<std::int32_t>(st->options.rank));
          auto heard = st->last_heard.find(rank);
          if (heard != st->last_heard.end() && now - heard->second > st->options.heartbeat_timeout)
            peer_down(*st, rank,
                      fmt::format("stopped answering: no heartbeat for {}",
                                  seconds_text(st->options.heartbeat_timeout)));
        }
        self->delayed_send(self, st->options.heartbeat_interval, tick_atom_v);
      },
      // Every peer is known: watch them and start the heartbeats.
      [self, st](tick_atom, bool start) {
        if (!start) return;
        const auto now = gateway_clock::now();
        for (const auto& [rank, peer] : st->peers) {
          self->monitor(peer);
          st->last_heard[rank] = now;
        }
        self->send(self, tick_atom_v);
      },
  };
}

/// Rank 0: once every rank has registered (and rank 0 gathers), everyone gets the table.
void hand_out_table_when_complete(state& st) {
  if (!st.gathering || static_cast<int>(st.cards.size()) != st.options.world) return;
  std::vector<process_card> table;
  for (auto& [rank, card] : st.cards) table.push_back(card);
  for (auto& waiter : st.card_waiters) waiter.deliver(table);
  st.card_waiters.clear();
  publish_writes_to(st.gathered_asker);
  st.gathered.deliver(table);
}

caf::message_handler rendezvous(instrumented_actor* self, gateway_state_ptr st) {
  return {
      // Rank 0: cards come in; the table goes out when all are here.
      [self, st](hello_atom, process_card& card) {
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
      // The other ranks: the hello goes from the gateway, so that rank 0 learns it.
      [self](hello_atom, const caf::actor& zero, process_card& card) {
        auto done = self->make_response_promise();
        self->request(zero, caf::infinite, hello_atom_v, std::move(card))
            .then([done](std::vector<process_card>& table) mutable { done.deliver(table); },
                  [done](caf::error& e) mutable { done.deliver(std::move(e)); });
      },
      [self, st](gather_atom, process_card& mine) {
        st->cards[0] = std::move(mine);
        st->gathering = true;
        st->gathered_asker = self->current_sender();  // before the promise takes it
        st->gathered = self->make_response_promise();
        hand_out_table_when_complete(*st);
      },
      [self, st](missing_atom) {
        std::vector<std::int32_t> absent;
        for (int r = 1; r < st->options.world; ++r)
          if (st->cards.count(r) == 0) absent.push_back(r);
        return replying(self, absent);
      },
      // Direct connections: a rank below this one introduces its gateway.
      [self, st](introduce_atom, std::int32_t rank) {
        st->peers[rank] = caf::actor_cast<caf::actor>(self->current_sender());
        if (st->awaiting_peers && static_cast<int>(st->peers.size()) == st->options.world - 1) {
          st->awaiting_peers = false;
          st->peers_complete.deliver(true);
        }
      },
      [self, st](peers_in_atom, std::map<std::int32_t, caf::actor>& connected) {
        for (auto& [rank, peer] : connected) {
          st->peers[rank] = peer;
          self->send(peer, introduce_atom_v, static_cast<std::int32_t>(st->options.rank));
        }
        auto done = self->make_response_promise();
        if (static_cast<int>(st->peers.size()) == st->options.world - 1) {
          done.deliver(true);
          return;
        }
        st->awaiting_peers = true;
        st->peers_complete = done;
      },
  };
}

/// Barrier: everyone reports to rank 0, which answers all at once.
void reach_barrier(instrumented_actor* self, state& st, std::int32_t rank) {
  auto done = self->make_response_promise();
  if (!st.dead.empty()) {
    // A process died before everyone got here: nobody will.
    done.deliver(actor_failure(st.dead.begin()->second));
    return;
  }
  st.barrier_waiters.push_back(done);
  if (st.options.rank != 0) {
    // Ours: ask rank 0; its answer (or its death) answers our caller.
    auto zero = st.peers.find(0);
    if (zero == st.peers.end()) {
      for (auto& waiter : st.barrier_waiters)
        waiter.deliver(actor_failure("rank 0 is not connected"));
      st.barrier_waiters.clear();
      return;
    }
    self->request(zero->second, caf::infinite, barrier_atom_v, rank)
        .then(
            [&st](bool) {
              for (auto& waiter : st.barrier_waiters) waiter.deliver(true);
              st.barrier_waiters.clear();
            },
            [&st](caf::error& e) {
              for (auto& waiter : st.barrier_waiters) waiter.deliver(e);
              st.barrier_waiters.clear();
            });
    return;
  }
  st.at_barrier.insert(rank);
  if (static_cast<int>(st.at_barrier.size()) == st.options.world) {
    for (auto& waiter : st.barrier_waiters) waiter.deliver(true);
    st.barrier_waiters.clear();
    st.at_barrier.clear();
  }
}

/// Leaving: rank 0 tells the others; they answer, then their owner leaves.
void finish_job(instrumented_actor* self, state& st, std::int32_t code, const std::string& why) {
  auto done = self->make_response_promise();
  if (st.options.rank != 0) {
    st.set_finish(code, why);
    done.deliver(true);
    return;
  }
  auto remaining = std::make_shared<int>(0);
  for (const auto& [rank, peer] : st.peers)
    if (st.dead.count(rank) == 0) ++*remaining;
  if (*remaining == 0) {
    done.deliver(true);
    return;
  }
  // The news is a courtesy: a process that does not hear it learns of rank 0's end when the
  // connection drops. A live one answers in milliseconds; one that stopped answering (about to
  // be declared dead) must not hold up the end of the job for long.
  const auto patience = std::min<std::chrono::milliseconds>(std::chrono::seconds(5),
                                                            2 * st.options.heartbeat_interval);
  for (const auto& [rank, peer] : st.peers) {
    if (st.dead.count(rank) != 0) continue;
    self->request(peer, patience, finish_atom_v, code, why)
        .then(
            [done, remaining](bool) mutable {
              if (--*remaining == 0) done.deliver(true);
            },
            [done, remaining](caf::error&) mutable {
              if (--*remaining == 0) done.deliver(true);
            });
  }
}

}  // namespace

caf::behavior gateway(instrumented_actor* self, gateway_state_ptr st) {
  self->set_down_handler([st](caf::down_msg& down) {
    for (const auto& [rank, peer] : st->peers)
      if (peer.address() == down.source)
        peer_down(*st, rank,
                  "is gone: its connection was lost (the process died or its host went away)");
  });
  caf::message_handler ends{
      [self, st](barrier_atom, std::int32_t rank) { reach_barrier(self, *st, rank); },
      [self, st](finish_atom, std::int32_t code, const std::string& why) {
        finish_job(self, *st, code, why);
      },
  };
  return routing(self, st).or_else(liveness(self, st)).or_else(rendezvous(self, st)).or_else(ends);
}

caf::behavior proxy(instrumented_actor* self, caf::actor gateway, std::string name,
                    std::int32_t rank) {
  self->set_default_handler(
      [gateway, name, rank](caf::scheduled_actor* me,
                            caf::message_view& view) -> caf::result<caf::message> {
        auto* actor = static_cast<instrumented_actor*>(me);
        actor->delegate(gateway, forward_atom_v, name, rank, view.move_content_to_message());
        return caf::message{};
      });
  return {[](proxy_atom) {}};
}

}  // namespace troupe
