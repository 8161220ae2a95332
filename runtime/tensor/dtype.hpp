#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include <dlpack/dlpack.h>

namespace troupe {

/// Element types a troupe tensor can hold.
enum class dtype : std::uint8_t { f32, bf16, f16, f8_e4m3, i32, i64, u8 };

/// DLPack 1.1's type code for float8_e4m3fn (PyTorch's torch.float8_e4m3fn). Debian's DLPack 0.6
/// header predates FP8 codes, so the value is pinned here to stay compatible with newer peers.
inline constexpr std::uint8_t dlpack_float8_e4m3fn_code = 10;

/// Size of one element in bytes.
constexpr std::size_t size_of(dtype type) {
  switch (type) {
    case dtype::f32:
      return 4;
    case dtype::bf16:
      return 2;
    case dtype::f16:
      return 2;
    case dtype::f8_e4m3:
      return 1;
    case dtype::i32:
      return 4;
    case dtype::i64:
      return 8;
    case dtype::u8:
      return 1;
  }
  return 0;
}

/// Canonical lower-case name: "f32", "bf16", "f16", "f8_e4m3", "i32", "i64", "u8".
std::string_view name_of(dtype type);

/// Parses a canonical name; also accepts safetensors' spellings ("F32", "BF16", "F8_E4M3", ...).
std::optional<dtype> parse_dtype(std::string_view name);

/// The DLPack type descriptor of `type` (lanes = 1).
DLDataType to_dlpack(dtype type);

/// The troupe dtype of a DLPack descriptor, or nullopt for types troupe does not hold
/// (vector lanes, f64, bool, ...).
std::optional<dtype> from_dlpack(DLDataType type);

}  // namespace troupe
