#pragma once

// Model FLOPs, the convention of MFU figures: 2 FLOPs per multiply-add of every weight a token
// goes through (the top-k routed experts only), plus causal attention (each query sees half the
// sequence on average), forward; backward costs twice the forward. Recomputation is not counted:
// it is work the implementation chose, not work the model needs.

#include <cstdint>

#include "runtime/model/model_config.hpp"

namespace troupe {

struct flops_per_token {
  double forward = 0.0;
  double training() const { return 3.0 * forward; }  ///< forward + backward
};

/// Per token of a sequence of `length`, for the whole model (main layers, head, and the MTP
/// modules when `with_mtp`).
flops_per_token model_flops(const model_config& config, std::int64_t length, bool with_mtp);

}  // namespace troupe
