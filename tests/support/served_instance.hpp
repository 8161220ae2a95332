#pragma once

// One serving instance on a transformers fixture: its model, cached model and latent cache, as
// the serving engines' tests hand them to an engine (serving_instance).

#include <cstdint>

#include "runtime/serve/disaggregated_engine.hpp"
#include "tests/support/fixture_model.hpp"

namespace troupe::testing {

struct served_instance : fixture_runner {
  explicit served_instance(std::uint64_t cache_bytes = 1 << 22)
      : fixture_runner("q-lora"),
        model(runner),
        cache(model.cache_shape(dtype::f32, 4), cache_bytes, device::cpu()) {}
  serving_instance view() { return {&model, &cache, &context, {}}; }
  cached_model model;
  latent_cache cache;
};

}  // namespace troupe::testing
