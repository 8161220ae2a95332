#pragma once

// Where a GPU step's time goes, by class of op: `troupe bench train --device cuda:N` turns timing
// on, and every op of kernels/dispatch (and the runtime's layers) brackets what it enqueues with
// CUDA events on the context's stream. Timing is off by default and then costs one relaxed atomic
// load per op. A scope nested in another counts for the outer one, so each op counts once. One
// state per process: the runtime's copy of this code and each plugin's find the same one.

#include <array>
#include <cstddef>
#include <map>
#include <version>
#if defined(__cpp_lib_source_location)
#include <source_location>
#endif
#include <string>

struct troupe_exec_context;

namespace troupe::kernels {

/// The classes of troupe bench train's breakdown.
enum class op_class : int {
  attention,    ///< flash attention forward and backward
  expert_gemm,  ///< the routed experts' grouped GEMMs
  dense_gemm,   ///< every other GEMM: projections, shared experts, the head, the gate
  routing,      ///< router, balance loss, counts, permutation to experts and back
  elementwise,  ///< norms, RoPE, SwiGLU, embedding, adds and copies on the device
  loss,         ///< the head's cross-entropy
  optimizer,    ///< AdamW and the gradient norm
  host_copies,  ///< copies between the device and the host inside a step
};
inline constexpr std::size_t op_class_count = 8;

/// "attention", "expert GEMMs", ...
const char* name(op_class c);

// NOTES: the caller's function name, evaluated at the call site as a default argument. clang 14
// with Debian's libstdc++ 12 (the fuzzing build) has no std::source_location; __builtin_FUNCTION
// gives the bare name there.
#if defined(__cpp_lib_source_location)
#define TROUPE_OP_FUNCTION std::source_location::current().function_name()
#else
#define TROUPE_OP_FUNCTION __builtin_FUNCTION()
#endif

/// Brackets the work a scope enqueues on `context`'s stream (GPU contexts, timing on), counted
/// for its class and for the function that opens it.
class op_scope {
 public:
  op_scope(const troupe_exec_context* context, op_class c,
           const char* function = TROUPE_OP_FUNCTION);
  ~op_scope();
  op_scope(const op_scope&) = delete;
  op_scope& operator=(const op_scope&) = delete;

  /// Whether this scope is timed and op_timing::details() is on: then a caller may describe the
  /// call (its shapes) with `detail`, and the breakdown counts it apart from the function's other
  /// calls.
  bool wants_detail() const;
  /// Appended to the function's name in the breakdown ("cuda_gemm 8192x3072x2048 NT bf16").
  void detail(std::string text);

 private:
  void* stream_ = nullptr;  ///< null: not timing
  std::string detail_;
  int device_ = 0;
  op_class class_{};
  const char* function_ = nullptr;
  void* start_ = nullptr;
};

namespace op_timing {

/// Turns timing on or off for the whole process.
void enable(bool on);
bool enabled();
/// Whether scopes that can describe their call (op_scope::detail) do: off by default.
void enable_details(bool on);
bool details();
struct times {
  std::array<double, op_class_count> classes{};  ///< milliseconds, indexed by op_class
  std::map<std::string, double> functions;       ///< milliseconds by the scope's function
};

/// The GPU time of the scopes closed since the last call, waiting for their events.
times collect();

}  // namespace op_timing

}  // namespace troupe::kernels
