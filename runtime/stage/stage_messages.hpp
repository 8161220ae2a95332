#pragma once

// A pipeline stage's messages (stage_actor.hpp): its step, and the activations and gradients it
// exchanges with the other stages of its replica.

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/actor/message.hpp"
#include "runtime/balancer/bias_balancer.hpp"
#include "runtime/data/micro_batch.hpp"
#include "runtime/schedule/schedule_plan.hpp"

namespace troupe {

/// An activation travelling to the forward of (stage, copy), or a gradient to its backward.
struct stage_transfer {
  TROUPE_MESSAGE("transfer");
  bool gradient = false;
  std::int32_t stage = 0;
  std::int32_t copy = 0;
  std::int64_t micro_batch = 0;
  tensor value;
  auto fields() { return std::tie(gradient, stage, copy, micro_batch, value); }
};

/// The losses one forward produced (the head's losses only where the chunk holds the head).
struct micro_batch_losses {
  std::int64_t micro_batch = 0;
  bool head = false;
  double loss = 0.0, mtp_loss = 0.0, balance_loss = 0.0;
  std::string non_finite;  ///< where this forward first went non-finite, or empty
  auto fields() { return std::tie(micro_batch, head, loss, mtp_loss, balance_loss, non_finite); }
};

/// What a pipeline rank did in one step.
struct rank_step_report {
  TROUPE_MESSAGE("rank_step_report");
  std::vector<micro_batch_losses> losses;
  expert_load load;           ///< tokens per expert of each MoE layer, over this rank's forwards
  double busy_seconds = 0.0;  ///< time spent computing ops
  /// (token, host) pairs whose experts lay on another host than the rank's own, and the most
  /// hosts one token's experts lay on.
  std::int64_t tokens_across_hosts = 0;
  std::int64_t most_hosts_per_token = 0;
  auto fields() {
    return std::tie(losses, load, busy_seconds, tokens_across_hosts, most_hosts_per_token);
  }
};

/// Coordinator -> pipeline rank: run one step of the plan on these micro-batches (the rank's
/// replica's), scaling the loss by `loss_scale`; or, forward only, the plan's forwards alone.
struct step_order {
  TROUPE_REQUEST("run_step", rank_step_report);
  std::int64_t step = 0;
  std::shared_ptr<const schedule_plan> plan;
  std::vector<micro_batch_input> inputs;
  float loss_scale = 1.0f;
  bool forward_only = false;  ///< evaluation or serving: forwards alone, nothing kept for backward
  auto fields() { return std::tie(step, plan, inputs, loss_scale, forward_only); }
};

/// Job -> pipeline rank, once before the first step: the ranks of its replica, by rank.
struct stage_peers {
  TROUPE_MESSAGE("peers");
  std::vector<actor_ref> peers;
  auto fields() { return std::tie(peers); }
};

/// Job -> the stages of a process when another process died: a step waiting for its transfers
/// would never end, so the running step fails with `why`, and so does every later one.
struct process_lost {
  TROUPE_MESSAGE("peer_down");
  std::string why;
  auto fields() { return std::tie(why); }
};

/// Pipeline rank -> the other ranks of its replica: its part of step `step` failed, so theirs
/// cannot finish (they would wait for its activations or gradients for ever).
struct peer_step_failed {
  TROUPE_MESSAGE("peer_failed");
  std::int64_t step = 0;
  std::int32_t rank = 0;
  std::string why;
  auto fields() { return std::tie(step, rank, why); }
};

/// A plan travels as what builds it.
template <class Archive>
void wire(Archive& a, std::shared_ptr<const schedule_plan>& plan) {
  schedule_kind kind = plan ? plan->kind() : schedule_kind::sequential;
  std::int32_t stages = plan ? plan->stages() : 0;
  std::int64_t micro_batches = plan ? plan->micro_batches() : 0;
  a(kind, stages, micro_batches);
  if constexpr (Archive::loading) {
    // Checked before anything is built from it: a malformed message must not allocate wildly.
    if (static_cast<int>(kind) < 0 ||
        static_cast<int>(kind) > static_cast<int>(schedule_kind::dualpipe) || stages < 1 ||
        stages > 4096 || micro_batches < 1 || micro_batches > (1 << 20))
      fail("a schedule plan of kind {}, {} stages and {} micro-batches: the message is malformed",
           static_cast<int>(kind), stages, micro_batches);
    plan = std::make_shared<const schedule_plan>(schedule_plan::build(kind, stages, micro_batches));
  }
}

}  // namespace troupe
