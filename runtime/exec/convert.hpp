#pragma once

#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// A contiguous copy of `source` with elements converted to `to`, on the same device.
/// Supported: f32 <-> bf16, f16 and f8_e4m3 on the CPU; f32 <-> bf16 and f8_e4m3 on CUDA (f16 on
/// CUDA is not needed by any kernel yet and says so). Conversions between two non-f32 types pass
/// through f32, which is exact for every pair here because f32 holds every bf16, f16 and e4m3
/// value. Rounding is to nearest even; e4m3 saturates at +-448 (see e4m3.hpp).
tensor convert(const tensor& source, dtype to);

}  // namespace troupe
