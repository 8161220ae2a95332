// The bias-balancer actor: one update per global batch, pushed to every holder of a router
// before the coordinator hears that the update is done.

#include <caf/all.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/train/train_messages.hpp"
#include "runtime/train/training_actors.hpp"

namespace troupe {

caf::actor spawn_balancer_actor(actor_runtime& runtime, std::shared_ptr<bias_balancer> balancer) {
  return runtime.spawn(
      "balancer",
      [](instrumented_actor* self, std::shared_ptr<bias_balancer> state) {
        return caf::behavior{
            [self, balancer = state](atoms::balance_atom, const load_report& report,
                                     const std::vector<caf::actor>& holders) {
              auto done = self->make_response_promise();
              try {
                balancer->update(report.load);
              } catch (const std::exception& e) {
                done.deliver(actor_failure(e));
                return;
              }
              router_biases biases{balancer->biases()};
              publish_writes_to(self->current_sender());
              if (holders.empty()) {
                done.deliver(biases);
                return;
              }
              auto remaining = std::make_shared<std::size_t>(holders.size());
              auto failed = std::make_shared<bool>(false);
              for (const auto& holder : holders)
                self->request(holder, caf::infinite, atoms::biases_atom_v, biases)
                    .then(
                        [done, remaining, failed, biases](bool) mutable {
                          if (--*remaining == 0 && !*failed) done.deliver(biases);
                        },
                        [done, failed](caf::error& e) mutable {
                          if (!*failed) {
                            *failed = true;
                            done.deliver(std::move(e));
                          }
                        });
            },
            [self, state](atoms::biases_atom) {
              return replying(self, router_biases{state->biases()});
            },
        };
      },
      std::move(balancer));
}

}  // namespace troupe
