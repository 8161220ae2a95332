#include "runtime/stage/stage_actor.hpp"

#include <map>
#include <optional>
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

struct stage_state {
  std::shared_ptr<stage_actor_setup> setup;
  std::unique_ptr<stage_transport> link;
  std::vector<actor_ref> peers;                              // the ranks of this replica, by rank
  std::optional<reply_promise<rank_step_report>> step_done;  // while a step runs
  std::int64_t step = -1;                                    // the running (or last) step
  std::string lost;  // another process died: every step fails with this
  std::map<std::int64_t, std::string> peer_failures;  // steps a peer failed, not yet begun here

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

/// What the job asks of every holder of parameters.
behavior holder_handlers(event_actor& self, std::shared_ptr<stage_actor_setup> s) {
  return behavior()
      .on<gradients_request>([s](gradients_request&) {
        gradient_report report;
        report.summary = s->rank->summarize_gradients(s->replicated);
        for (auto& [name, grad] : s->rank->gradients_of(s->replicated))  // summed on the host
          report.replicated.emplace_back(name,
                                         grad.where().is_cpu() ? grad : grad.to(device::cpu()));
        return report;
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
      .on<optimizer_order>([&self, s](optimizer_order& order) {
        // A GPU rank's last snapshot has been copying during this step: it goes out first.
        send_snapshot(self, *s, true);
        s->rank->optimize(order.learning_rate, order.grad_scale, order.step);
        if (order.snapshot && s->ema) {
          if (s->rank->asynchronous_snapshots()) {
            start_snapshot(*s, s->ema_wait);
          } else {
            self.tell(s->ema,
                      ema_snapshot{s->rank->snapshot(s->owned), s->rank->buffers(s->owned)});
          }
        }
        return true;
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
        .add(holder_handlers(self, setup));
  };
  return runtime.spawn("stage", std::move(init), actor_thread::own);
}

}  // namespace troupe
