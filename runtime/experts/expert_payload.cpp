#include "runtime/experts/expert_payload.hpp"

#include "kernels/cpu/fp8_quantize.hpp"
#include "runtime/core/error.hpp"
#include "runtime/exec/convert.hpp"

namespace troupe {

std::string_view to_string(wire_precision precision) {
  switch (precision) {
    case wire_precision::f32:
      return "f32";
    case wire_precision::bf16:
      return "bf16";
    case wire_precision::fp8:
      return "fp8";
  }
  return "?";
}

std::size_t encoded_rows::bytes() const {
  return (values.defined() ? values.nbytes() : 0) + (scales.defined() ? scales.nbytes() : 0);
}

encoded_rows encode_rows(const tensor& rows, wire_precision precision) {
  if (!rows.defined() || rows.type() != dtype::f32 || rows.dim() != 2 || !rows.is_contiguous() ||
      !rows.where().is_cpu())
    fail("expert rows must be a contiguous CPU f32 tensor [rows, hidden], got {}",
         rows.defined() ? rows.describe() : "nothing");
  encoded_rows out;
  out.precision = precision;
  switch (precision) {
    case wire_precision::f32:
      out.values = rows;
      break;
    case wire_precision::bf16:
      out.values = convert(rows, dtype::bf16);
      break;
    case wire_precision::fp8: {
      const std::int64_t r = rows.size(0), h = rows.size(1);
      const std::int64_t tiles = (h + kernels::cpu::fp8_tile - 1) / kernels::cpu::fp8_tile;
      out.values = tensor::empty(dtype::f8_e4m3, {r, h});
      out.scales = tensor::empty(dtype::f32, {r, tiles});
      kernels::cpu::fp8_quantize_row_tiles(rows.data_as<const float>(), r, h,
                                           out.values.data_as<std::uint8_t>(),
                                           out.scales.data_as<float>());
      break;
    }
  }
  return out;
}

tensor decode_rows(const encoded_rows& rows) {
  const tensor& v = rows.values;
  if (!v.defined() || v.dim() != 2 || !v.is_contiguous() || !v.where().is_cpu())
    fail("expert payload: values must be a contiguous CPU tensor [rows, hidden], got {}",
         v.defined() ? v.describe() : "nothing");
  switch (rows.precision) {
    case wire_precision::f32:
      if (v.type() != dtype::f32) fail("expert payload: f32 rows hold {}", v.describe());
      return v;
    case wire_precision::bf16:
      if (v.type() != dtype::bf16) fail("expert payload: bf16 rows hold {}", v.describe());
      return convert(v, dtype::f32);
    case wire_precision::fp8: {
      const std::int64_t r = v.size(0), h = v.size(1);
      const std::int64_t tiles = (h + kernels::cpu::fp8_tile - 1) / kernels::cpu::fp8_tile;
      const tensor& s = rows.scales;
      if (v.type() != dtype::f8_e4m3 || !s.defined() || s.type() != dtype::f32 ||
          s.shape() != std::vector<std::int64_t>{r, tiles} || !s.is_contiguous())
        fail(
            "expert payload: fp8 rows need e4m3 codes [{0}, {1}] and f32 scales [{0}, {2}], got "
            "{3} and {4}",
            r, h, tiles, v.describe(), s.defined() ? s.describe() : "no scales");
      tensor out = tensor::empty(dtype::f32, {r, h});
      kernels::cpu::fp8_dequantize_row_tiles(v.data_as<const std::uint8_t>(),
                                             s.data_as<const float>(), r, h, out.data_as<float>());
      return out;
    }
  }
  fail("expert payload: unknown precision");
}

}  // namespace troupe
