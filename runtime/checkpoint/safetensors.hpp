#pragma once

// The safetensors format, read and written by troupe itself:
//   [8 bytes: header length N, little-endian u64][N bytes: JSON header][data]
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// into the data section) and may hold "__metadata__" (string to string). Reading maps the file
// and checks every entry: known dtype, offsets inside the data, sizes that match the shape, no
// overlaps. Tensors read are views into the mapping (no copy); they keep it alive.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

/// A checkpoint file or directory that cannot be used; the message names the file and the cause.
class checkpoint_error : public error {
 public:
  using error::error;
};

struct safetensors_entry {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;  ///< offset into the data section
  std::uint64_t end = 0;
};

class safetensors_file {
 public:
  /// Maps and validates `file`. Throws checkpoint_error for a missing, truncated or corrupt file.
  static safetensors_file open(const std::filesystem::path& file);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<safetensors_entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const safetensors_entry* find(std::string_view name) const;

  /// A CPU tensor viewing the mapped bytes of `name` (read-only by convention).
  tensor get(std::string_view name) const;

 private:
  struct mapping;
  /// Opens and maps `file`, which must be at least 8 bytes long (the header length).
  static std::shared_ptr<mapping> map_file(const std::filesystem::path& file);

  std::filesystem::path path_;
  std::shared_ptr<mapping> mapping_;
  std::uint64_t data_start_ = 0;  ///< file offset of the data section
  std::vector<safetensors_entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Writes contiguous CPU tensors to `file` in safetensors format, atomically: the data goes to a
/// temporary file in the same directory that is then renamed over `file`. The header is padded
/// with spaces so the data starts 8-byte aligned.
void write_safetensors(const std::filesystem::path& file,
                       const std::vector<std::pair<std::string, tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

/// safetensors' dtype spelling ("F32", "BF16", "F8_E4M3", ...).
std::string_view safetensors_dtype_name(dtype type);

}  // namespace troupe
