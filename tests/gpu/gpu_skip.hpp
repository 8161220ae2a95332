#pragma once

// The GPU suite skips, saying why, where there is no GPU to run on.

#include <gtest/gtest.h>

#include "runtime/device/cuda.hpp"

#define TROUPE_SKIP_WITHOUT_GPU()                                                            \
  do {                                                                                       \
    if (!::troupe::cuda::built_with_cuda()) GTEST_SKIP() << "troupe was built without CUDA"; \
    if (::troupe::cuda::device_count() == 0)                                                 \
      GTEST_SKIP() << "no GPU: " << ::troupe::cuda::unavailable_reason();                    \
  } while (false)
