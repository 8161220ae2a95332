#include "runtime/tensor/dtype.hpp"

#include <array>
#include <utility>

namespace troupe {

namespace {

struct dtype_info {
  dtype type;
  std::string_view name;
  std::string_view safetensors_name;
  DLDataType dl;
};

constexpr std::array<dtype_info, 7> dtype_table{{
    {dtype::f32, "f32", "F32", {kDLFloat, 32, 1}},
    {dtype::bf16, "bf16", "BF16", {kDLBfloat, 16, 1}},
    {dtype::f16, "f16", "F16", {kDLFloat, 16, 1}},
    {dtype::f8_e4m3, "f8_e4m3", "F8_E4M3", {dlpack_float8_e4m3fn_code, 8, 1}},
    {dtype::i32, "i32", "I32", {kDLInt, 32, 1}},
    {dtype::i64, "i64", "I64", {kDLInt, 64, 1}},
    {dtype::u8, "u8", "U8", {kDLUInt, 8, 1}},
}};

const dtype_info& info(dtype type) {
  return dtype_table[static_cast<std::size_t>(type)];
}

}  // namespace

std::string_view name_of(dtype type) {
  return info(type).name;
}

std::optional<dtype> parse_dtype(std::string_view name) {
  for (const auto& entry : dtype_table)
    if (name == entry.name || name == entry.safetensors_name) return entry.type;
  return std::nullopt;
}

DLDataType to_dlpack(dtype type) {
  return info(type).dl;
}

std::optional<dtype> from_dlpack(DLDataType type) {
  for (const auto& entry : dtype_table)
    if (entry.dl.code == type.code && entry.dl.bits == type.bits && entry.dl.lanes == type.lanes)
      return entry.type;
  return std::nullopt;
}

}  // namespace troupe
