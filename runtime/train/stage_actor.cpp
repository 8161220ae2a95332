// The pipeline-rank actor: runs a pipeline_rank's ops as their inputs arrive from its peers.

#include <chrono>

#include <caf/all.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/train/actor_expert_transport.hpp"
#include "runtime/train/plugin_swap_handlers.hpp"
#include "runtime/train/stage_transport.hpp"
#include "runtime/train/train_checkpoint.hpp"
#include "runtime/train/train_messages.hpp"
#include "runtime/train/training_actors.hpp"

namespace troupe {

namespace {

/// Transfers to the other ranks of the replica as actor messages (in-process: the tensors'
/// storage is shared, not copied).
class message_stage_transport : public stage_transport {
 public:
  message_stage_transport(instrumented_actor* self, std::vector<caf::actor> peers)
      : self_(self), peers_(std::move(peers)) {}
  void send(std::int32_t to, stage_transfer transfer) override {
    self_->send(peers_.at(static_cast<std::size_t>(to)), atoms::transfer_atom_v,
                std::move(transfer));
  }

 private:
  instrumented_actor* self_;
  std::vector<caf::actor> peers_;  // by rank
};

struct stage_state {
  std::shared_ptr<stage_actor_setup> setup;
  std::unique_ptr<stage_transport> link;
  caf::response_promise step_done;
  caf::strong_actor_ptr asker;  // who asked for the running step
  bool running = false;
  std::string failure;  // the first error of the running step
};

void pump(stage_state& st) {
  if (!st.running) return;
  pipeline_rank& rank = *st.setup->rank;
  try {
    for (auto& [to, t] : rank.advance()) st.link->send(to, std::move(t));
  } catch (const std::exception& e) {
    st.running = false;
    st.step_done.deliver(actor_failure(e));
    return;
  }
  if (rank.finished()) {
    st.running = false;
    publish_writes_to(st.asker);
    st.step_done.deliver(rank.take_report());
  }
}

}  // namespace

caf::actor spawn_stage_actor(actor_runtime& runtime, std::shared_ptr<stage_actor_setup> setup) {
  return runtime.spawn_detached(
      "stage",
      [](instrumented_actor* self, std::shared_ptr<stage_actor_setup> rank_setup) {
        auto st = std::make_shared<stage_state>();
        st->setup = std::move(rank_setup);
        auto slots = [st](plugin_kind kind) { return st->setup->rank->plugin_slots(kind); };
        return caf::behavior(
            plugin_swap_handlers(self, st->setup->plugins, slots)
                .or_else(
                    [self, st](atoms::peers_atom, std::vector<caf::actor>& peers) {
                      st->link = std::make_unique<message_stage_transport>(self, std::move(peers));
                    },
                    [self, st](atoms::stop_atom) {
                      if (st->setup->transport) st->setup->transport->close();
                      return replying(self, true);
                    },
                    [self, st](atoms::run_step_atom, step_order& order) {
                      st->asker = self->current_sender();
                      st->step_done = self->make_response_promise();
                      try {
                        st->setup->rank->begin_step(std::move(order.plan), std::move(order.inputs),
                                                    order.loss_scale);
                      } catch (const std::exception& e) {
                        st->step_done.deliver(actor_failure(e));
                        return;
                      }
                      st->running = true;
                      pump(*st);
                    },
                    [self, st](atoms::transfer_atom, stage_transfer& t) {
                      st->setup->rank->deliver(std::move(t));
                      pump(*st);
                    },
                    [self, st](atoms::gradients_atom) -> caf::result<gradient_report> {
                      try {
                        gradient_report report;
                        report.summary =
                            st->setup->rank->summarize_gradients(st->setup->replicated);
                        report.replicated.items =
                            st->setup->rank->gradients_of(st->setup->replicated);
                        return replying(self, std::move(report));
                      } catch (const std::exception& e) {
                        return actor_failure(e);
                      }
                    },
                    // The sums of the replicated gradients, in the order this rank reported them.
                    [self, st](atoms::reduced_atom,
                               const named_tensors& sums) -> caf::result<bool> {
                      try {
                        auto mine = st->setup->rank->gradients_of(st->setup->replicated);
                        if (mine.size() != sums.items.size())
                          fail("{} reduced gradients for {} replicated parameters",
                               sums.items.size(), mine.size());
                        for (std::size_t i = 0; i < mine.size(); ++i)
                          if (mine[i].second.data() != sums.items[i].second.data())
                            mine[i].second.copy_from(sums.items[i].second);
                        return replying(self, true);
                      } catch (const std::exception& e) {
                        return actor_failure(e);
                      }
                    },
                    // Another process died: a step waiting for its transfers would never end.
                    [self, st](atoms::peer_down_atom, const std::string& why) {
                      if (!st->running) return;
                      st->running = false;
                      publish_writes_to(st->asker);
                      st->step_done.deliver(caf::make_error(caf::sec::runtime_error, why));
                    },
                    [self, st](atoms::optimize_atom,
                               const optimizer_order& order) -> caf::result<bool> {
                      try {
                        st->setup->rank->optimize(order.learning_rate, order.grad_scale,
                                                  order.step);
                        if (order.snapshot && st->setup->ema)
                          self->send(st->setup->ema, atoms::snapshot_atom_v,
                                     ema_snapshot{st->setup->rank->snapshot(st->setup->owned),
                                                  st->setup->rank->buffers(st->setup->owned)});
                        return replying(self, true);
                      } catch (const std::exception& e) {
                        return actor_failure(e);
                      }
                    },
                    [self, st](atoms::biases_atom,
                               const router_biases& biases) -> caf::result<bool> {
                      try {
                        st->setup->rank->set_router_biases(biases.values);
                        return replying(self, true);
                      } catch (const std::exception& e) {
                        return actor_failure(e);
                      }
                    },
                    [self, st](atoms::save_atom,
                               const checkpoint_order& order) -> caf::result<checkpoint_written> {
                      try {
                        checkpoint_written written;
                        written.weights = write_holder_part(
                            order.directory, order.weights_file, order.optimizer_file,
                            st->setup->rank->checkpoint_tensors(st->setup->owned),
                            st->setup->rank->optimizer_state(st->setup->owned));
                        return replying(self, std::move(written));
                      } catch (const std::exception& e) {
                        return actor_failure(e);
                      }
                    }));
      },
      std::move(setup));
}

}  // namespace troupe
