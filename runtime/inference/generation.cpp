#include "runtime/inference/generation.hpp"

#include "runtime/inference/batch_decoder.hpp"

namespace troupe {

generation_result generate_sequence(cached_model& model, latent_cache& cache,
                                    const exec_context& context, const generation_request& request,
                                    const std::function<void(std::int32_t)>& on_token) {
  batch_decoder decoder(model, cache, context);
  const batch_decoder::sequence_id id = decoder.add(request);
  while (decoder.active() > 0)
    for (const batch_decoder::event& e : decoder.step())
      if (on_token)
        for (const std::int32_t token : e.tokens) on_token(token);
  return decoder.take_result(id);
}

}  // namespace troupe
