#pragma once

// A Hugging Face model directory: config.json plus safetensors weights, in one file
// (model.safetensors) or sharded (model.safetensors.index.json maps each tensor to its file).
// Tensors are read as f32: F32 as stored, BF16 and F16 widened, and F8_E4M3 weights dequantised
// with their `<name>_scale_inv` (DeepSeek's weight_scale_inv: one factor per 128x128 block,
// edge blocks zero-padded).

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/checkpoint/safetensors.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/model/parameter_store.hpp"

namespace troupe {

class thread_pool;

class hf_checkpoint {
 public:
  /// Opens `directory` (its config.json and weights). Throws checkpoint_error naming the file.
  static hf_checkpoint open(const std::filesystem::path& directory);

  const std::filesystem::path& directory() const { return directory_; }
  const model_config& config() const { return config_; }

  bool contains(std::string_view name) const { return where_.count(std::string(name)) != 0; }
  /// Every tensor name, sorted.
  std::vector<std::string> names() const;
  /// The stored dtype and shape of `name`.
  const safetensors_entry& entry(std::string_view name) const;

  /// `name` as a contiguous f32 CPU tensor (see above). Throws checkpoint_error.
  tensor read_f32(std::string_view name) const;

 private:
  const safetensors_file& file_of(std::string_view name) const;

  std::filesystem::path directory_;
  model_config config_;
  std::vector<safetensors_file> files_;
  std::map<std::string, std::size_t> where_;  // tensor name -> index into files_
};

/// Writes a Hugging Face model directory: config.json (the model's source config) and
/// model.safetensors with `tensors` in float32, each file atomically.
void write_hf_checkpoint(const std::filesystem::path& directory, const model_config& config,
                         const std::vector<std::pair<std::string, tensor>>& tensors);

/// Loads every parameter of `store` from `checkpoint`, converting to f32, on `pool`'s workers
/// when given. Throws checkpoint_error naming each missing tensor or shape mismatch (before
/// anything is read), or the first tensor holding a non-finite value.
void load_parameters(const hf_checkpoint& checkpoint, parameter_store& store,
                     thread_pool* pool = nullptr);

}  // namespace troupe
