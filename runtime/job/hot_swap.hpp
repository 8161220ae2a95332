#pragma once

// Hot swaps of plugins in a running job, everywhere or nowhere. At a step boundary, when no
// micro-batch is in flight, the job asks every holder actor (pipeline stages for every role,
// expert shards for moe and the GEMM) to prepare successors of its plugin instances, then, when
// every holder succeeded, to commit; if any failed, every holder aborts and nothing changed:
//   prepare_swap -> int64   successors built for every instance of the kind (none in place
//                           yet); a GEMM swap prepares the process's provider (1 for the first
//                           holder of the process, 0 for the others); a holder's own part
//                           (swap_participant: a pipeline rank checks the built-in GEMM's
//                           precision) may refuse first
//   commit_swap -> bool     the successors take over
//   abort_swap -> bool      the successors are dropped
// A holder adds hot_swap_handlers to its behavior; the job calls swap_everywhere.

#include <cstdint>
#include <functional>
#include <memory>
#include <tuple>
#include <vector>

#include "runtime/actor/actor_runtime.hpp"
#include "runtime/job/process_plugins.hpp"
#include "runtime/plugin/instance_swap.hpp"

namespace troupe {

struct prepare_swap {
  TROUPE_REQUEST("swap", std::int64_t);
  plugin_swap_order order;
  auto fields() { return std::tie(order); }
};

struct commit_swap {
  TROUPE_REQUEST("commit", bool);
  auto fields() { return std::tie(); }
};

struct abort_swap {
  TROUPE_REQUEST("abort", bool);
  auto fields() { return std::tie(); }
};

/// What a holder does itself in a swap, besides its plugin instances and its process's GEMM
/// provider (a pipeline rank on a GPU switches its context to the built-in GEMM's precision).
struct swap_participant {
  /// At prepare, before anything is built: throws to refuse the swap (every holder then drops
  /// its successors). Null: nothing to check.
  std::function<void(const plugin_swap_order&)> prepare;
  /// At commit, after the successors took over. Null: nothing to do.
  std::function<void(const plugin_swap_order&)> commit;
};

/// The handlers of a holder whose instances of a kind `slots_of` finds, in the process whose
/// shared swap state is `plugins`; `own` is the holder's own part.
behavior hot_swap_handlers(std::shared_ptr<process_plugins> plugins,
                           std::function<std::vector<instance_slot>(plugin_kind)> slots_of,
                           swap_participant own = {});

/// A swap that changed nothing: a holder could not prepare (the library does not load, crashes,
/// exits or hangs in the probe process that tries it first, is misnamed or the wrong kind, or its
/// instances differ), or no holder runs a plugin of the kind.
class swap_refused : public error {
 public:
  enum class reason {
    failed,        ///< a holder could not prepare
    no_instances,  ///< nobody runs a plugin of the kind
  };
  swap_refused(reason why, const std::string& message) : error(message), why_(why) {}
  reason why() const { return why_; }

 private:
  reason why_;
};

/// Swaps `order`'s plugin on every one of `holders`, from the coordinator. Returns how many
/// instances were replaced. Throws swap_refused when nothing changed (every holder aborted), and
/// troupe::error when a holder failed to commit: the job is half swapped and must stop.
std::int64_t swap_everywhere(blocking_actor& self, const named_actors& holders,
                             const plugin_swap_order& order);

}  // namespace troupe
