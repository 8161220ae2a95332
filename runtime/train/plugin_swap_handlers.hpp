#pragma once

// The part of a holder actor (a pipeline rank, an expert shard) that takes part in a hot swap of
// a plugin. The coordinator sends, at a step boundary when no micro-batch is in flight:
//   (swap_atom, plugin_swap_order) -> int64: successors built for every instance of the kind
//                                     (none in place yet); an error names the instance's cause.
//                                     A GEMM swap prepares the process's provider (1 for the
//                                     first holder of the process, 0 for the others).
//   (commit_atom) -> bool:          the successors take over
//   (abort_atom) -> bool:           the successors are dropped; nothing changed
// Every holder prepares before any commits, so a failure anywhere leaves the whole job as it was.

#include <functional>
#include <vector>

#include <caf/message_handler.hpp>

#include "runtime/plugin/instance_swap.hpp"
#include "runtime/train/process_plugins.hpp"

namespace troupe {

class instrumented_actor;

/// The handlers for a holder whose instances of a kind `slots_of` finds, in the process whose
/// shared swap state is `plugins`.
caf::message_handler plugin_swap_handlers(
    instrumented_actor* self, std::shared_ptr<process_plugins> plugins,
    std::function<std::vector<instance_slot>(plugin_kind)> slots_of);

}  // namespace troupe
