// The expert-shard actor: computes the rows pipeline ranks dispatch to its experts, and owns
// their gradients and optimizer state.

#include <caf/all.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/train/plugin_swap_handlers.hpp"
#include "runtime/train/train_checkpoint.hpp"
#include "runtime/train/train_messages.hpp"
#include "runtime/train/training_actors.hpp"

namespace troupe {

caf::actor spawn_expert_shard_actor(actor_runtime& runtime,
                                    std::shared_ptr<shard_actor_setup> setup) {
  return runtime.spawn_detached(
      "expert_shard",
      [](instrumented_actor* self, std::shared_ptr<shard_actor_setup> st) {
        auto slots = [st](plugin_kind kind) { return st->shard->plugin_slots(kind); };
        return caf::behavior(
            plugin_swap_handlers(self, st->plugins, slots)
                .or_else(
                    [self, st](const expert_request& request) -> caf::result<expert_reply> {
                      try {
                        return replying(self, st->shard->handle(*st->context, request));
                      } catch (const std::exception& e) {
                        return actor_failure(e);
                      }
                    },
                    [self, st](atoms::gradients_atom) -> caf::result<gradient_report> {
                      // The per-source gradients first go into one, in source order (deterministic
                      // whatever order the stages' requests came in).
                      st->shard->reduce_source_gradients();
                      gradient_report report;
                      add_gradients(st->shard->parameters().all(), {}, report.summary);
                      return replying(self, std::move(report));
                    },
                    [self, st](atoms::optimize_atom,
                               const optimizer_order& order) -> caf::result<bool> {
                      try {
                        st->optimizer->step(order.learning_rate, order.grad_scale, order.step,
                                            st->context->pool());
                        st->shard->zero_grads();
                        if (order.snapshot && st->ema) {
                          ema_snapshot snapshot;
                          for (parameter* p : st->shard->parameters().all())
                            (p->spec.trainable() ? snapshot.weights : snapshot.buffers)
                                .emplace_back(p->name, p->value.clone());
                          self->send(st->ema, atoms::snapshot_atom_v, std::move(snapshot));
                        }
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
                            st->shard->parameters().named_values(), st->optimizer->state());
                        return replying(self, std::move(written));
                      } catch (const std::exception& e) {
                        return actor_failure(e);
                      }
                    }));
      },
      std::move(setup));
}

}  // namespace troupe
