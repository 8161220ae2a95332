// The data-loader actor: hands out each step's micro-batches from the token stream.

#include <caf/all.hpp>

#include "runtime/actor/actor_failure.hpp"
#include "runtime/actor/atoms.hpp"
#include "runtime/actor/instrumented_actor.hpp"
#include "runtime/train/train_messages.hpp"
#include "runtime/train/training_actors.hpp"

namespace troupe {

caf::actor spawn_data_actor(actor_runtime& runtime, std::shared_ptr<data_actor_setup> setup) {
  return runtime.spawn(
      "data",
      [](instrumented_actor* self, std::shared_ptr<data_actor_setup> st) {
        return caf::behavior{
            [self, st](atoms::batch_atom, std::int64_t micro_batches) -> caf::result<data_batch> {
              try {
                data_batch out;
                const std::int64_t b = st->micro_batch_size, l = st->sequence_length;
                for (std::int64_t m = 0; m < micro_batches; ++m) {
                  micro_batch_input input{tensor::empty(dtype::i32, {b, l}),
                                          tensor::empty(dtype::i32, {b, l})};
                  st->stream->next_batch(b, l, input.tokens.data_as<std::int32_t>(),
                                         input.targets.data_as<std::int32_t>());
                  out.inputs.push_back(std::move(input));
                }
                out.after = st->stream->position();
                return replying(self, std::move(out));
              } catch (const std::exception& e) {
                return actor_failure(e);
              }
            },
        };
      },
      std::move(setup));
}

}  // namespace troupe
