#pragma once

// The EMA updater as an actor: an exponential moving average of the weights, kept on the CPU in
// FP32 (ema_tracker.hpp), folded in from the snapshots the holders send after their optimizer
// steps. It runs on a thread of its own at low priority (nice +10), so it takes only idle
// cycles and never holds up a training step.
//
// Messages (ema_messages.hpp): ema_snapshot (one-way); save_ema -> bool.

#include <memory>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/ema/ema_tracker.hpp"
#include "runtime/model/model_config.hpp"

namespace troupe {

struct ema_actor_setup {
  std::unique_ptr<ema_tracker> tracker;
  model_config config;  ///< written with the averages (config.json)
};

actor_ref spawn_ema_actor(actor_runtime& runtime, std::shared_ptr<ema_actor_setup> setup);

}  // namespace troupe
