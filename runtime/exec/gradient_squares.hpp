#pragma once

// Sums of squares of weight gradients that layers compute where they write the gradients (the
// routed experts' Wgrad epilogue) and report through their context (gradient_squares, ABI 1.6),
// so that the global gradient norm reads one double instead of the whole gradient. A report holds
// for the context's gradient generation at the time it was made: once the runtime zeroes the
// gradients (exec_context::gradients_zeroed) it no longer applies. Process-wide, like the BF16
// copies.

#include <cstdint>

struct troupe_exec_context;

namespace troupe::gradient_squares {

/// The context's gradient_squares: records (or, `sum` null, withdraws) the device double holding
/// the sum of squares of the gradient at `grad`, as of the context's gradient generation.
std::int32_t report(const troupe_exec_context* context, const float* grad, std::int64_t count,
                    const double* sum);

/// The sum reported for the gradient at `grad` of `count` floats at gradient generation
/// `generation`, or null (none, another size, or another generation).
const double* find(const float* grad, std::int64_t count, std::uint64_t generation);

}  // namespace troupe::gradient_squares
