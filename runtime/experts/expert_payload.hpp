#pragma once

// Token rows as they travel between a stage and an expert shard. DeepSeek-V3 dispatches
// activations in FP8 (E4M3, one scale per 1x128 tile: the quantization the experts' FP8 GEMMs
// apply anyway) and combines in BF16; in FP32 training both stay FP32.

#include <cstdint>
#include <string_view>
#include <tuple>

#include "runtime/tensor/tensor.hpp"

namespace troupe {

enum class wire_precision { f32, bf16, fp8 };

std::string_view to_string(wire_precision precision);

/// Rows [R, H] on the wire.
struct encoded_rows {
  wire_precision precision = wire_precision::f32;
  tensor values;  ///< f32, bf16, or f8_e4m3 codes, [R, H]
  tensor scales;  ///< fp8 only: f32 [R, ceil(H/128)], the factor that turns codes into values
  std::size_t bytes() const;
  auto fields() { return std::tie(precision, values, scales); }
};

/// Encodes f32 rows [R, H] (contiguous, on the CPU).
encoded_rows encode_rows(const tensor& rows, wire_precision precision);

/// Back to f32 [R, H]; throws troupe::error for a malformed payload.
tensor decode_rows(const encoded_rows& rows);

}  // namespace troupe
