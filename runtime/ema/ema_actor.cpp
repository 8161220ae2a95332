#include "runtime/ema/ema_actor.hpp"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/ema/ema_messages.hpp"

namespace troupe {

actor_ref spawn_ema_actor(actor_runtime& runtime, std::shared_ptr<ema_actor_setup> setup) {
  return runtime.spawn(
      "ema",
      [setup](event_actor&) {
        // Linux priorities are per thread, and the behavior is built in the actor's own thread:
        // it yields to the compute threads. Failing to lower it only costs speed.
        (void)setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
        return behavior()
            .on<ema_snapshot>([setup](ema_snapshot& snapshot) {
              setup->tracker->update(snapshot.weights, snapshot.buffers, snapshot.updates);
            })
            .on<save_ema>([setup](save_ema& order) {
              write_hf_checkpoint(order.directory, setup->config, setup->tracker->weights());
              return true;
            });
      },
      actor_thread::own);
}

}  // namespace troupe
