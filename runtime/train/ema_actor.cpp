// The EMA actor: folds snapshots into the average on a thread of its own at low priority, so
// the average never holds up a training step.

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <caf/all.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/train/train_messages.hpp"
#include "runtime/train/training_actors.hpp"

namespace troupe {

caf::actor spawn_ema_actor(actor_runtime& runtime, std::shared_ptr<ema_actor_setup> setup) {
  return runtime.spawn_detached(
      "ema",
      [](instrumented_actor*, std::shared_ptr<ema_actor_setup> st) {
        // Linux priorities are per thread: this detached actor's thread yields to the compute
        // threads (nice +10). Failing to lower it only costs speed.
        (void)setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
        return caf::behavior{
            [st](atoms::snapshot_atom, const ema_snapshot& snapshot) {
              st->tracker->update(snapshot.weights, snapshot.buffers);
            },
            [st](atoms::save_atom, const std::string& directory) -> caf::result<bool> {
              try {
                write_hf_checkpoint(directory, st->config, st->tracker->weights());
                return true;
              } catch (const std::exception& e) {
                return actor_failure(e);
              }
            },
        };
      },
      std::move(setup));
}

}  // namespace troupe
