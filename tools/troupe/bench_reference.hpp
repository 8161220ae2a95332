#pragma once

// The reference every CPU throughput figure of `troupe bench` is a ratio to.

#include "runtime/exec/thread_pool.hpp"

namespace troupe::cli {

/// sgemm 1024^3 on the worker pool, GFLOP/s (best of 4).
double sgemm_gflops(thread_pool& pool);

}  // namespace troupe::cli
