#pragma once

#include <tuple>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// One micro-batch of a step: the input tokens and the next-token targets, i32
/// [micro_batch_size, sequence_length] each.
struct micro_batch_input {
  tensor tokens;
  tensor targets;
  auto fields() { return std::tie(tokens, targets); }
};

}  // namespace troupe
