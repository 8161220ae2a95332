#pragma once

// A transformers fixture (tests/fixtures/models/NAME) loaded into a whole-model model_runner on
// a device, with the worker pool and exec context to run it, and random prompts: what the
// inference tests share.

#include <cstdint>
#include <random>
#include <vector>

#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/exec/exec_context.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/plugin/registry.hpp"
#include "tests/support/fixtures.hpp"

namespace troupe::testing {

struct fixture_runner {
  /// The fixture's weights on `where`; `mtp` false leaves the MTP modules out.
  explicit fixture_runner(const char* fixture, device where = device::cpu(), bool mtp = true)
      : checkpoint(hf_checkpoint::open(fixture_model(fixture))),
        runner(checkpoint.config(), {}, load_model_plugins(registry, checkpoint.config()),
               options(where, mtp)),
        pool(2),
        context(where, pool) {
    load_parameters(checkpoint, runner.parameters());
  }
  static model_options options(device where, bool mtp) {
    model_options o;
    o.where = where;
    o.mtp = mtp;
    return o;
  }
  hf_checkpoint checkpoint;
  plugin_registry registry;
  model_runner runner;
  thread_pool pool;
  exec_context context;
};

/// `count` token ids uniform in [0, vocab), the same for the same seed.
inline std::vector<std::int32_t> random_tokens(std::int64_t count, std::int64_t vocab,
                                               unsigned seed) {
  std::mt19937 generator(seed);
  std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(vocab - 1));
  std::vector<std::int32_t> out(static_cast<std::size_t>(count));
  for (auto& t : out) t = pick(generator);
  return out;
}

}  // namespace troupe::testing
