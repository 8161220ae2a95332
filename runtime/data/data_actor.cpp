#include "runtime/data/data_actor.hpp"

#include "runtime/data/data_messages.hpp"

namespace troupe {

actor_ref spawn_data_actor(actor_runtime& runtime, std::shared_ptr<data_actor_setup> setup) {
  return runtime.spawn("data", [setup](event_actor&) {
    return behavior().on<batch_request>([setup](batch_request& request) {
      data_batch out;
      const std::int64_t b = setup->micro_batch_size, l = setup->sequence_length;
      for (std::int64_t m = 0; m < request.micro_batches; ++m) {
        micro_batch_input input{tensor::empty(dtype::i32, {b, l}),
                                tensor::empty(dtype::i32, {b, l})};
        setup->stream->next_batch(b, l, input.tokens.data_as<std::int32_t>(),
                                  input.targets.data_as<std::int32_t>());
        out.inputs.push_back(std::move(input));
      }
      out.after = setup->stream->position();
      return out;
    });
  });
}

}  // namespace troupe
