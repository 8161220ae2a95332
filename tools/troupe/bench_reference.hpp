#pragma once

// The reference every CPU throughput figure of `troupe bench` is a ratio to.

#include "runtime/exec/thread_pool.hpp"

namespace troupe::cli {

/// sgemm 1024^3 on the worker pool, GFLOP/s (best of 4).
double sgemm_gflops(thread_pool& pool);

/// The GPU's reference: a BF16 cuBLASLt GEMM of 8192^3 (BF16 in and out, FP32 accumulation) on
/// cuda:`ordinal`, TFLOP/s (median of 20 after 5 warm-up runs). 0 in a build without CUDA.
double bf16_peak_tflops(int ordinal);

}  // namespace troupe::cli
