#include "runtime/balancer/balancer_actor.hpp"

#include "runtime/balancer/balancer_messages.hpp"

namespace troupe {

actor_ref spawn_balancer_actor(actor_runtime& runtime, std::shared_ptr<bias_balancer> balancer) {
  return runtime.spawn("balancer", [balancer](event_actor& self) {
    return behavior()
        .on<balance_request>(
            [&self, balancer](balance_request& request, reply_promise<router_biases> done) {
              balancer->update(request.load);
              router_biases biases{balancer->biases()};
              self.ask_each(
                  request.holders, set_router_biases{biases.values},
                  [done, biases](std::vector<bool>&) mutable { done.deliver(biases); },
                  [done](const std::string& why) mutable { done.fail(why); });
            })
        .on<biases_request>(
            [balancer](biases_request&) { return router_biases{balancer->biases()}; });
  });
}

}  // namespace troupe
