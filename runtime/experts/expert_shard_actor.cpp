#include "runtime/experts/expert_shard_actor.hpp"

#include "runtime/checkpoint/training_checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/ema/ema_messages.hpp"
#include "runtime/experts/expert_messages.hpp"
#include "runtime/job/holder_messages.hpp"
#include "runtime/job/hot_swap.hpp"

namespace troupe {

namespace {

ema_snapshot snapshot_of(expert_shard& shard) {
  ema_snapshot snapshot;
  for (parameter* p : shard.parameters().all())
    (p->spec.trainable() ? snapshot.weights : snapshot.buffers)
        .emplace_back(p->name, p->value.clone());
  return snapshot;
}

/// Training's messages reach a serving shard (one without an optimizer) only by mistake.
void require_optimizer(const shard_actor_setup& setup) {
  if (!setup.optimizer) fail("this expert shard serves a model: it holds no gradients to step");
}

}  // namespace

actor_ref spawn_expert_shard_actor(actor_runtime& runtime,
                                   std::shared_ptr<shard_actor_setup> setup) {
  auto init = [setup](event_actor& self) {
    auto slots = [setup](plugin_kind kind) { return setup->shard->plugin_slots(kind); };
    return hot_swap_handlers(setup->plugins, slots)
        .on<expert_request>([setup](expert_request& request) {
          return setup->shard->handle(*setup->context, request);
        })
        .on<gradients_request>([setup](gradients_request&) {
          require_optimizer(*setup);
          // The per-source gradients first go into one, in source order (deterministic whatever
          // order the stages' requests came in).
          setup->shard->reduce_source_gradients();
          gradient_report report;
          add_gradients(setup->shard->parameters().all(), {}, report.summary);
          return report;
        })
        .on<optimizer_order>([&self, setup](optimizer_order& order) {
          require_optimizer(*setup);
          setup->optimizer->step(order.learning_rate, order.grad_scale, order.step,
                                 setup->context->pool());
          setup->shard->zero_grads(&setup->context->pool());
          if (order.snapshot && setup->ema) self.tell(setup->ema, snapshot_of(*setup->shard));
          return true;
        })
        .on<checkpoint_order>([setup](checkpoint_order& order) {
          require_optimizer(*setup);
          checkpoint_written written;
          written.weights = write_holder_part(
              order.directory, order.weights_file, order.optimizer_file,
              setup->shard->parameters().named_values(), setup->optimizer->state());
          return written;
        })
        .on<expert_handover_request>([setup](expert_handover_request& request) {
          return hand_over(*setup->shard, setup->optimizer.get(), request.experts);
        })
        .on<expert_placement_order>([setup](expert_placement_order& order) {
          if (!setup->rebuild) fail("this expert shard cannot change its experts");
          setup->pending = prepare_successor(*setup->shard, setup->optimizer.get(), order,
                                             setup->rebuild, setup->optimizer_settings);
          return true;
        })
        .on<expert_placement_commit>([setup](expert_placement_commit& order) {
          shard_successor next = std::move(setup->pending);
          if (order.commit) {
            if (!next.shard) fail("expert shard: a rebalance commits, but nothing was prepared");
            setup->shard = std::move(next.shard);
            setup->optimizer = std::move(next.optimizer);
          }
          return true;
        })
        .on<stop_request>([](stop_request&) { return true; });
  };
  return runtime.spawn("expert_shard", std::move(init), actor_thread::own);
}

}  // namespace troupe
