#pragma once

// The bias balancer's messages (balancer_actor.hpp).

#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "runtime/actor/message.hpp"
#include "runtime/balancer/bias_balancer.hpp"

namespace troupe {

/// The router biases of every MoE layer, by layer.
struct router_biases {
  TROUPE_MESSAGE("router_biases");
  std::map<std::int64_t, std::vector<float>> values;
  auto fields() { return std::tie(values); }
};

/// Coordinator -> balancer, once per global batch: the step's expert load. The balancer updates
/// the biases and hands them to every holder of a router before it answers with them.
struct balance_request {
  TROUPE_REQUEST("balance", router_biases);
  expert_load load;
  std::vector<actor_ref> holders;
  auto fields() { return std::tie(load, holders); }
};

/// Anyone -> balancer: the biases as they are.
struct biases_request {
  TROUPE_REQUEST("biases", router_biases);
  auto fields() { return std::tie(); }
};

/// Balancer -> every holder of a router (the pipeline stages): route with these from the next
/// micro-batch on. The holders' copies are the balancer's, never updated anywhere else.
struct set_router_biases {
  TROUPE_REQUEST("set_biases", bool);
  std::map<std::int64_t, std::vector<float>> values;
  auto fields() { return std::tie(values); }
};

}  // namespace troupe
