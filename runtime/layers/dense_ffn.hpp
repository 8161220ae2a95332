#pragma once

// The dense SwiGLU feed-forward block of the first first_k_dense_replace layers:
//   y = down(silu(gate(x)) * up(x))
// Its three linear layers go through the GEMM provider (FP8 when the topology says so); it runs
// on the context's device (kernels/dispatch). Under the runtime's cuBLASLt BF16 provider on a GPU
// the block runs on BF16 operands (kernels/dispatch/swiglu_block.hpp) over BF16 copies of its
// weights rounded at each forward.

#include <cstdint>
#include <map>
#include <vector>

#include "kernels/dispatch/device_ops.hpp"
#include "kernels/dispatch/swiglu_block.hpp"
#include "runtime/abi/troupe_plugin.h"
#include "runtime/exec/exec_context.hpp"

namespace troupe {

struct dense_ffn_weights {
  const float* gate = nullptr;  ///< [inter, hidden]
  const float* up = nullptr;    ///< [inter, hidden]
  const float* down = nullptr;  ///< [hidden, inter]
  float* d_gate = nullptr;
  float* d_up = nullptr;
  float* d_down = nullptr;
};

class dense_ffn {
 public:
  dense_ffn(std::int64_t hidden, std::int64_t inter) : hidden_(hidden), inter_(inter) {}

  /// y (overwritten) from x; x must stay valid until backward of `micro_batch`.
  void forward(const exec_context& context, const dense_ffn_weights& w, std::int64_t micro_batch,
               const float* x, float* y, std::int64_t rows);
  /// dx += ...; the weight part accumulates the weight gradients.
  void backward(const exec_context& context, const dense_ffn_weights& w, std::int64_t micro_batch,
                troupe_backward_part part, const float* dy, float* dx);
  void forget(std::int64_t micro_batch) { saved_.erase(micro_batch); }

 private:
  struct saved {
    const float* x = nullptr;
    std::int64_t rows = 0;
    kernels::buffer gate_up, h, dy, d_gate_up;
    bool bf16 = false;  // the BF16 block (the f32 buffers above stay empty)
    kernels::ops::swiglu_bf16_saved block;
  };
  /// Whether `context` runs the BF16 block: a GPU under the runtime's cuBLASLt BF16 provider (a
  /// GEMM plugin's, fp8, keeps its own linear layers), widths that are multiples of 8.
  bool bf16_path(const troupe_exec_context* context) const;
  /// The weights' BF16 copies ([gate; up] and down), rounded from `w` now.
  kernels::ops::swiglu_bf16_weights round_weights(const troupe_exec_context* context,
                                                  const dense_ffn_weights& w);

  std::int64_t hidden_, inter_;
  std::map<std::int64_t, saved> saved_;
  kernels::device_array<std::uint16_t> gate_up16_, down16_;
};

/// Throws troupe::error when a provider call fails (with the provider's message).
void check_gemm(troupe_status status, const troupe_error& error, const char* what);

}  // namespace troupe
