#include "runtime/stage/stage_actor.hpp"

#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "runtime/balancer/balancer_messages.hpp"
#include "runtime/checkpoint/training_checkpoint.hpp"
#include "runtime/ema/ema_messages.hpp"
#include "runtime/experts/expert_messages.hpp"
#include "runtime/job/holder_messages.hpp"
#include "runtime/job/hot_swap.hpp"
#include "runtime/stage/stage_transport.hpp"

namespace troupe {

namespace {

/// ZeRO-1's exchanges in flight (zero_sharding.hpp): the pieces that came, by round and sender,
/// and the answer each exchange finishes.
struct zero_state {
  std::vector<actor_ref> ranks;      // every rank's actor, by index
  std::int64_t rounds[2] = {0, 0};   // reduce-scatters, all-gathers done
  std::int64_t buckets[2] = {0, 0};  // the bucket each kind's open round is at
  std::map<std::tuple<bool, std::int64_t, std::int64_t>, std::map<std::int32_t, zero_pieces>>
      inbox;  // (values, round, bucket) -> pieces by sender
  std::optional<reply_promise<gradient_report>> reducing;
  gradient_report report;  // the reduce's answer, its summary filled as far as it goes
  std::optional<reply_promise<bool>> gathering;
  optimizer_order order;  // the all-gather's step

  // An exchange failed here or at a peer, or a process died: the job's step fails, and every
  // exchange after it fails with this at once (peers may have stopped sending).
  std::string broken;

  /// Fails the exchanges in flight with `why`.
  void abandon(const std::string& why) {
    if (reducing) reducing->fail(why);
    if (gathering) gathering->fail(why);
    reducing.reset();
    gathering.reset();
  }
};

struct stage_state {
  std::shared_ptr<stage_actor_setup> setup;
  std::unique_ptr<stage_transport> link;
  std::vector<actor_ref> peers;                              // the ranks of this replica, by rank
  std::optional<reply_promise<rank_step_report>> step_done;  // while a step runs
  std::int64_t step = -1;                                    // the running (or last) step
  std::string lost;  // another process died: every step fails with this
  std::map<std::int64_t, std::string> peer_failures;  // steps a peer failed, not yet begun here
  std::shared_ptr<zero_state> zero;                   // ZeRO-1's exchanges

  /// Fails the running step with `why`.
  void fail_step(const std::string& why) {
    if (!step_done) return;
    step_done->fail(why);
    step_done.reset();
  }
};

/// Runs the ops whose inputs are there; answers the step when the last one ran. A failure
/// fails the step here and at the peers, whose ops may wait for this rank's.
void pump(event_actor& self, stage_state& st) {
  if (!st.step_done) return;
  pipeline_rank& rank = *st.setup->rank;
  try {
    for (auto& [to, t] : rank.advance()) st.link->send(to, std::move(t));
  } catch (const std::exception& e) {
    st.fail_step(e.what());
    for (std::size_t r = 0; r < st.peers.size(); ++r)
      if (static_cast<std::int32_t>(r) != rank.rank())
        self.tell(st.peers[r], peer_step_failed{st.step, rank.rank(), e.what()});
    return;
  }
  if (rank.finished()) {
    st.step_done->deliver(rank.take_report());
    st.step_done.reset();
  }
}

/// The step and the transfers of the pipeline.
behavior pipeline_handlers(event_actor& self, std::shared_ptr<stage_state> st) {
  return behavior()
      .on<stage_peers>([&self, st](stage_peers& m) {
        st->peers = m.peers;
        st->link = std::make_unique<message_stage_transport>(self, std::move(m.peers));
      })
      .on<step_order>([&self, st](step_order& order, reply_promise<rank_step_report> done) {
        st->step = order.step;
        if (!st->lost.empty()) {
          done.fail(st->lost);
          return;
        }
        if (auto failed = st->peer_failures.extract(order.step)) {
          done.fail(failed.mapped());
          return;
        }
        st->setup->rank->begin_step(std::move(order.plan), std::move(order.inputs),
                                    order.loss_scale, order.forward_only);
        st->step_done = std::move(done);
        pump(self, *st);
      })
      .on<stage_transfer>([&self, st](stage_transfer& t) {
        st->setup->rank->deliver(std::move(t));
        pump(self, *st);
      })
      .on<peer_step_failed>([st](peer_step_failed& m) {
        const std::string why = fmt::format("stage rank {} failed: {}", m.rank, m.why);
        if (st->step_done && st->step == m.step)
          st->fail_step(why);
        else if (m.step > st->step)
          st->peer_failures[m.step] = why;
      })
      // Another process died: a step waiting for its transfers would never end.
      .on<process_lost>([st](process_lost& m) {
        st->lost = m.why;
        st->fail_step(m.why);
        st->zero->broken = m.why;
        st->zero->abandon(m.why);
      })
      .on<set_router_biases>([st](set_router_biases& m) {
        st->setup->rank->set_router_biases(m.values);
        return true;
      })
      .on<expert_routing_order>([st](expert_routing_order& m) {
        st->setup->rank->set_expert_placement(m.layers);
        return true;
      });
}

/// Sends a GPU rank's started EMA snapshot once its copy is done (waiting for it if `wait`).
void send_snapshot(event_actor& self, stage_actor_setup& s, bool wait) {
  if (!s.ema) return;
  auto weights = s.rank->take_snapshot(wait);
  if (!weights) return;
  self.tell(s.ema,
            ema_snapshot{std::move(*weights), std::move(s.snapshot_buffers), s.snapshot_updates});
  s.snapshot_buffers.clear();
}

/// Starts a GPU rank's EMA snapshot of the values after this optimizer step. Unless `must`, a
/// snapshot that would wait for the EMA actor (two snapshots behind: the host's pass over the
/// weights is slower than the GPU's step) is skipped and folded into the next one, so the EMA
/// never stalls the step.
void start_snapshot(stage_actor_setup& s, bool must) {
  if (!must && !s.rank->snapshot_can_start()) {
    ++s.snapshots_skipped;
    return;
  }
  s.rank->start_snapshot(s.owned);
  s.snapshot_buffers = s.rank->buffers(s.owned);
  s.snapshot_updates = 1 + s.snapshots_skipped;
  s.snapshots_skipped = 0;
}

/// ZeRO-1 fails here: the exchanges in flight fail with `why`, every later one fails at once, and
/// the peers hear of it (once), since they would otherwise wait for this rank's pieces.
void break_exchanges(event_actor& self, stage_actor_setup& s, zero_state& z,
                     const std::string& why) {
  const bool first = z.broken.empty();
  if (first) z.broken = why;
  z.abandon(why);
  if (!first || !s.zero) return;
  for (std::int32_t peer : s.zero->peers())
    if (static_cast<std::size_t>(peer) < z.ranks.size())
      self.tell(z.ranks[static_cast<std::size_t>(peer)],
                zero_exchange{0, false, 0, s.zero->rank(), {}, why});
}

/// What an exchange of kind `values` reads and writes: the chunks' values, or their gradients.
chunk_tensor exchanged_tensors(pipeline_rank& rank, bool values) {
  return [&rank, values](std::int32_t chunk, const std::string& name) {
    return rank.tensor_of(chunk, name, !values);
  };
}

/// Sends every peer its pieces of the open round's current bucket; throws what making them throws.
void send_bucket(event_actor& self, stage_actor_setup& s, zero_state& z, bool values) {
  const zero_sharding& zero = *s.zero;
  const chunk_tensor of = exchanged_tensors(*s.rank, values);
  const auto bucket = static_cast<std::size_t>(z.buckets[values]);
  for (std::int32_t peer : zero.peers())
    self.tell(z.ranks.at(static_cast<std::size_t>(peer)),
              zero_exchange{z.rounds[values],
                            values,
                            z.buckets[values],
                            zero.rank(),
                            values ? zero.value_pieces(peer, of, bucket)
                                   : zero.gradient_pieces(peer, of, bucket),
                            {}});
}

/// Works through the open round of kind `values` bucket by bucket while every peer's pieces of
/// the current one are there (sending the next bucket after each); returns whether the round is
/// done.
bool advance_exchange(event_actor& self, stage_actor_setup& s, zero_state& z, bool values) {
  const zero_sharding& zero = *s.zero;
  const chunk_tensor of = exchanged_tensors(*s.rank, values);
  while (static_cast<std::size_t>(z.buckets[values]) < zero.buckets()) {
    const auto key = std::tuple{values, z.rounds[values], z.buckets[values]};
    auto it = z.inbox.find(key);
    const std::size_t peers = zero.peers().size();
    if (peers > 0 && (it == z.inbox.end() || it->second.size() < peers)) return false;
    std::map<std::int32_t, zero_pieces> received;
    if (it != z.inbox.end()) {
      received = std::move(it->second);
      z.inbox.erase(it);
    }
    const auto bucket = static_cast<std::size_t>(z.buckets[values]);
    if (values)
      zero.gather(received, of, bucket);
    else
      zero.reduce(received, of, bucket, z.report.summary);
    if (static_cast<std::size_t>(++z.buckets[values]) < zero.buckets())
      send_bucket(self, s, z, values);
  }
  ++z.rounds[values];
  z.buckets[values] = 0;
  return true;
}

/// Opens a round: its first bucket goes out.
void start_exchange(event_actor& self, stage_actor_setup& s, zero_state& z, bool values) {
  z.buckets[values] = 0;
  if (s.zero->buckets() > 0) send_bucket(self, s, z, values);
}

/// After the optimizer step (and, under ZeRO-1, the all-gather): the EMA's snapshot.
void after_update(event_actor& self, stage_actor_setup& s, const optimizer_order& order) {
  if (!order.snapshot || !s.ema) return;
  if (s.rank->asynchronous_snapshots()) {
    start_snapshot(s, s.ema_wait);
  } else {
    self.tell(s.ema, ema_snapshot{s.rank->snapshot(s.owned), s.rank->buffers(s.owned)});
  }
}

/// The reduce-scatter's and the all-gather's answers, when their last bucket is done. A failure
/// fails the exchange here and at the peers, which would otherwise wait for this rank's pieces.
void pump_exchanges(event_actor& self, stage_actor_setup& s, zero_state& z) {
  for (bool values : {false, true}) {
    const bool open = values ? z.gathering.has_value() : z.reducing.has_value();
    if (!open) continue;
    try {
      if (!advance_exchange(self, s, z, values)) continue;
      if (values) {
        after_update(self, s, z.order);
        z.gathering->deliver(true);
        z.gathering.reset();
      } else {
        z.reducing->deliver(std::move(z.report));
        z.reducing.reset();
      }
    } catch (const std::exception& e) {
      break_exchanges(self, s, z, fmt::format("ZeRO-1 on rank {}: {}", s.zero->rank(), e.what()));
    }
  }
}

/// ZeRO-1's messages between the ranks.
behavior zero_handlers(event_actor& self, std::shared_ptr<stage_actor_setup> s,
                       std::shared_ptr<zero_state> z) {
  return behavior()
      .on<zero_peers>([z](zero_peers& m) { z->ranks = std::move(m.ranks); })
      .on<zero_exchange>([&self, s, z](zero_exchange& m) {
        if (!m.failure.empty()) return break_exchanges(self, *s, *z, m.failure);
        if (!z->broken.empty()) return;  // this rank's step has failed already
        const auto key = std::tuple{m.values, m.round, m.bucket};
        auto it = z->inbox.find(key);
        if (!s->zero || m.round < z->rounds[m.values] ||
            (it != z->inbox.end() && it->second.count(m.from) != 0))
          return break_exchanges(
              self, *s, *z,
              fmt::format("ZeRO-1: rank {} got an unexpected exchange (round {}, bucket {}, {}) "
                          "from rank {}",
                          s->zero ? s->zero->rank() : -1, m.round, m.bucket,
                          m.values ? "values" : "gradients", m.from));
        z->inbox[key][m.from] = std::move(m.pieces);
        pump_exchanges(self, *s, *z);
      });
}

/// What the job asks of every holder of parameters.
behavior holder_handlers(event_actor& self, std::shared_ptr<stage_actor_setup> s,
                         std::shared_ptr<zero_state> z) {
  return behavior()
      .on<gradients_request>(
          [&self, s, z](gradients_request&, reply_promise<gradient_report> done) {
            if (s->zero) {  // reduce-scattered between the ranks
              if (!z->broken.empty()) return done.fail(z->broken);
              z->reducing = std::move(done);
              try {
                z->report = gradient_report{};
                z->report.summary = s->rank->summarize_gradients(s->replicated);
                start_exchange(self, *s, *z, false);
              } catch (const std::exception& e) {
                return break_exchanges(
                    self, *s, *z, fmt::format("ZeRO-1 on rank {}: {}", s->zero->rank(), e.what()));
              }
              pump_exchanges(self, *s, *z);
              return;
            }
            gradient_report report;
            report.summary = s->rank->summarize_gradients(s->replicated);
            for (auto& [name, grad] : s->rank->gradients_of(s->replicated))  // summed on the host
              report.replicated.emplace_back(name,
                                             grad.where().is_cpu() ? grad : grad.to(device::cpu()));
            done.deliver(std::move(report));
          })
      // The sums of the replicated gradients, in the order this rank reported them.
      .on<reduced_gradients>([s](reduced_gradients& m) {
        auto mine = s->rank->gradients_of(s->replicated);
        if (mine.size() != m.sums.size())
          fail("{} reduced gradients for {} replicated parameters", m.sums.size(), mine.size());
        for (std::size_t i = 0; i < mine.size(); ++i)
          if (mine[i].second.data() != m.sums[i].second.data())
            mine[i].second.copy_from(m.sums[i].second);
        return true;
      })
      .on<optimizer_order>([&self, s, z](optimizer_order& order, reply_promise<bool> done) {
        // A GPU rank's last snapshot has been copying during this step: it goes out first.
        send_snapshot(self, *s, true);
        if (s->zero) {  // the updated ranges all-gathered between the ranks
          if (!z->broken.empty()) return done.fail(z->broken);
          z->order = order;
          z->gathering = std::move(done);
          try {
            s->rank->optimize(order.learning_rate, order.grad_scale, order.step);
            start_exchange(self, *s, *z, true);
          } catch (const std::exception& e) {
            return break_exchanges(self, *s, *z,
                                   fmt::format("ZeRO-1 on rank {}: {}", s->zero->rank(), e.what()));
          }
          pump_exchanges(self, *s, *z);
          return;
        }
        s->rank->optimize(order.learning_rate, order.grad_scale, order.step);
        after_update(self, *s, order);
        done.deliver(true);
      })
      .on<checkpoint_order>([&self, s](checkpoint_order& order) {
        send_snapshot(self, *s, true);   // the EMA writes after every holder has answered
        if (s->snapshots_skipped > 0) {  // the checkpoint's EMA is as of this step
          --s->snapshots_skipped;
          start_snapshot(*s, true);
          send_snapshot(self, *s, true);
        }
        checkpoint_written written;
        written.weights = write_holder_part(
            order.directory, order.weights_file, order.optimizer_file,
            s->rank->checkpoint_tensors(s->owned), s->rank->optimizer_state(s->owned));
        return written;
      })
      .on<stop_request>([s](stop_request&) {
        if (s->transport) s->transport->close();
        return true;
      });
}

}  // namespace

actor_ref spawn_stage_actor(actor_runtime& runtime, std::shared_ptr<stage_actor_setup> setup) {
  // A GPU rank with an EMA allocates its two pinned snapshot sets now: a first snapshot would
  // otherwise stall its step for the allocation (about 20 s for the medium config's 2 x 29 GB).
  if (setup->ema && setup->rank->asynchronous_snapshots())
    setup->rank->prepare_snapshots(setup->owned);
  auto init = [setup](event_actor& self) {
    auto st = std::make_shared<stage_state>();
    st->setup = setup;
    auto zero = st->zero = std::make_shared<zero_state>();
    auto slots = [setup](plugin_kind kind) { return setup->rank->plugin_slots(kind); };
    // A swap of the GEMM to the built-in switches the rank's own precision (its GPU context's
    // cuBLASLt, FP32 or BF16); a rank that cannot compute in it refuses the swap everywhere.
    auto to_builtin = [](const plugin_swap_order& order) {
      return order.kind == plugin_kind::gemm && order.library.empty();
    };
    swap_participant own;
    own.prepare = [setup, to_builtin](const plugin_swap_order& order) {
      if (to_builtin(order)) setup->rank->check_builtin_gemm(order.builtin);
    };
    own.commit = [setup, to_builtin](const plugin_swap_order& order) {
      if (to_builtin(order)) setup->rank->use_builtin_gemm(order.builtin);
    };
    return hot_swap_handlers(setup->plugins, slots, std::move(own))
        .add(pipeline_handlers(self, st))
        .add(holder_handlers(self, setup, zero))
        .add(zero_handlers(self, setup, zero));
  };
  return runtime.spawn("stage", std::move(init), actor_thread::own);
}

}  // namespace troupe
