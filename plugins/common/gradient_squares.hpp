#pragma once

// A layer's reports of its weight gradients' sums of squares (ABI 1.6: gradient_squares), for a
// layer that computes them where it writes the gradients (the routed experts' Wgrad epilogue), so
// that the runtime's global gradient norm need not read those gradients again. The layer owns the
// sums' memory; this class reports them, withdraws what it reported where the layer wrote a
// gradient without a sum, and withdraws everything before that memory goes.

#include <cstddef>
#include <cstdint>
#include <unordered_set>

#include "runtime/abi/troupe_plugin.h"

namespace troupe::plugin {

class gradient_square_reports {
 public:
  gradient_square_reports() = default;
  ~gradient_square_reports() { withdraw(); }
  gradient_square_reports(const gradient_square_reports&) = delete;
  gradient_square_reports& operator=(const gradient_square_reports&) = delete;

  /// Whether `context`'s runtime takes reports.
  static bool offered(const troupe_exec_context* context) {
    return context->struct_size >= offsetof(troupe_exec_context, gradient_squares) +
                                       sizeof(context->gradient_squares) &&
           context->gradient_squares != nullptr;
  }

  /// `sum` (device memory, written by work already enqueued on the context's stream) holds the
  /// sum of squares of the `count` floats of the gradient at `grad` as this backward left it.
  void report(const troupe_exec_context* context, const float* grad, std::int64_t count,
              const double* sum) {
    if (!offered(context)) return;
    report_ = context->gradient_squares;
    if (report_(context, grad, count, sum) == 1) reported_.insert(grad);
  }

  /// The layer wrote its gradients without sums (or is about to free the sums): nothing reported
  /// before holds.
  void withdraw() {
    for (const float* grad : reported_) report_(nullptr, grad, 0, nullptr);
    reported_.clear();
  }

 private:
  std::unordered_set<const float*> reported_;
  std::int32_t (*report_)(const troupe_exec_context*, const float*, std::int64_t,
                          const double*) = nullptr;
};

}  // namespace troupe::plugin
