#pragma once

// The bias balancer as an actor: DeepSeek-V3's auxiliary-loss-free balancing (bias_balancer.hpp)
// once per global batch, pushed to every holder of a router before the coordinator hears that
// the update is done. The balancer owns the router biases: the stages route with the copies it
// hands them, and a checkpoint keeps them once, in the model's weights. Light: it runs on the
// actor runtime's shared threads.
//
// Messages (balancer_messages.hpp): balance_request -> router_biases, after every holder took
// set_router_biases; biases_request -> router_biases.

#include <memory>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/balancer/bias_balancer.hpp"

namespace troupe {

actor_ref spawn_balancer_actor(actor_runtime& runtime, std::shared_ptr<bias_balancer> balancer);

}  // namespace troupe
