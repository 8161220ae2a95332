#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/exec/exec_context.hpp"

#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "kernels/cpu/fp8_quantize.hpp"
#include "runtime/core/input_limits.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/exec/thread_pool.hpp"

namespace troupe {

namespace fs = std::filesystem;

hf_checkpoint hf_checkpoint::open(const fs::path& directory) {
  hf_checkpoint result;
  result.directory_ = directory;
  if (!fs::is_directory(directory))
    throw checkpoint_error(
        fmt::format("{}: not a directory (a Hugging Face model directory has config.json and "
                    "*.safetensors)",
                    directory.string()));
  const fs::path config = directory / "config.json";
  if (!fs::is_regular_file(config))
    throw checkpoint_error(fmt::format("{}: no config.json", directory.string()));
  result.config_ = load_model_config(config);

  const fs::path index = directory / "model.safetensors.index.json";
  std::vector<fs::path> files;
  if (fs::is_regular_file(index)) {
    nlohmann::json parsed;
    try {
      parsed = read_json_file(index, "shard index");
    } catch (const troupe::error& e) {
      throw checkpoint_error(e.what());
    }
    if (!parsed.contains("weight_map") || !parsed["weight_map"].is_object())
      throw checkpoint_error(fmt::format("{}: has no weight_map object", index.string()));
    std::map<std::string, std::size_t> file_index;
    for (auto it = parsed["weight_map"].begin(); it != parsed["weight_map"].end(); ++it) {
      if (!it->is_string())
        throw checkpoint_error(
            fmt::format("{}: weight_map['{}'] is not a file name", index.string(), it.key()));
      const std::string file = it->get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == ".." ||
          file.find('\0') != std::string::npos)
        throw checkpoint_error(
            fmt::format("{}: weight_map['{}'] = \"{}\" is not a file name in the model directory",
                        index.string(), it.key(), file));
      auto [slot, inserted] = file_index.try_emplace(file, files.size());
      if (inserted) files.push_back(directory / file);
      result.where_[it.key()] = slot->second;
    }
    for (const auto& file : files) result.files_.push_back(safetensors_file::open(file));
    for (const auto& [name, i] : result.where_)
      if (result.files_[i].find(name) == nullptr)
        throw checkpoint_error(fmt::format("{}: the index puts '{}' in {}, which does not have it",
                                           index.string(), name, files[i].filename().string()));
    return result;
  }
  for (const auto& item : fs::directory_iterator(directory))
    if (item.path().extension() == ".safetensors") files.push_back(item.path());
  std::sort(files.begin(), files.end());
  if (files.empty())
    throw checkpoint_error(fmt::format(
        "{}: no *.safetensors file and no model.safetensors.index.json", directory.string()));
  for (const auto& file : files) {
    result.files_.push_back(safetensors_file::open(file));
    for (const auto& e : result.files_.back().entries()) {
      auto [it, inserted] = result.where_.try_emplace(e.name, result.files_.size() - 1);
      if (!inserted)
        throw checkpoint_error(
            fmt::format("{}: tensor '{}' is in both {} and {}", directory.string(), e.name,
                        files[it->second].filename().string(), file.filename().string()));
    }
  }
  return result;
}

std::vector<std::string> hf_checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

const safetensors_file& hf_checkpoint::file_of(std::string_view name) const {
  auto it = where_.find(std::string(name));
  if (it == where_.end())
    throw checkpoint_error(
        fmt::format("{}: the checkpoint has no tensor '{}'", directory_.string(), name));
  return files_[it->second];
}

const safetensors_entry& hf_checkpoint::entry(std::string_view name) const {
  return *file_of(name).find(name);
}

tensor hf_checkpoint::read_f32(std::string_view name) const {
  const safetensors_file& file = file_of(name);
  const tensor stored = file.get(name);
  switch (stored.type()) {
    case dtype::f32:
      return stored.clone();
    case dtype::bf16:
    case dtype::f16:
      return convert(stored, dtype::f32);
    case dtype::f8_e4m3:
      break;
    default:
      throw checkpoint_error(fmt::format("{}: tensor '{}' is {}, not a floating-point weight",
                                         file.path().string(), name, name_of(stored.type())));
  }
  // FP8: dequantise with the 128x128 block factors.
  const std::string scale_name = std::string(name) + "_scale_inv";
  if (stored.dim() != 2)
    throw checkpoint_error(fmt::format("{}: FP8 tensor '{}' must be 2-D for block dequantisation",
                                       file.path().string(), name));
  if (!contains(scale_name))
    throw checkpoint_error(fmt::format("{}: FP8 tensor '{}' has no '{}' to dequantise it with",
                                       file.path().string(), name, scale_name));
  const tensor scales = read_f32(scale_name);
  const std::int64_t rows = stored.size(0), cols = stored.size(1), tile = kernels::cpu::fp8_tile;
  const std::vector<std::int64_t> expected{(rows + tile - 1) / tile, (cols + tile - 1) / tile};
  if (scales.shape() != expected)
    throw checkpoint_error(
        fmt::format("{}: '{}' is [{}] but a [{}, {}] weight needs [{}, {}] (one per 128x128 block)",
                    file_of(scale_name).path().string(), scale_name,
                    fmt::join(scales.shape(), ", "), rows, cols, expected[0], expected[1]));
  tensor out = tensor::empty(dtype::f32, {rows, cols});
  kernels::cpu::fp8_dequantize_blocks(stored.data_as<const std::uint8_t>(),
                                      scales.data_as<const float>(), rows, cols,
                                      out.data_as<float>());
  return out;
}

void write_hf_checkpoint(const fs::path& directory, const model_config& config,
                         const std::vector<std::pair<std::string, tensor>>& tensors) {
  std::error_code ec;
  fs::create_directories(directory, ec);
  if (ec)
    throw checkpoint_error(
        fmt::format("{}: cannot create the directory: {}", directory.string(), ec.message()));
  const fs::path config_file = directory / "config.json";
  const fs::path partial = directory / "config.json.partial";
  {
    std::ofstream out(partial, std::ios::trunc);
    out << nlohmann::json::parse(config.json_text).dump(2) << "\n";
    if (!out) throw checkpoint_error(fmt::format("{}: cannot write", partial.string()));
  }
  fs::rename(partial, config_file, ec);
  if (ec)
    throw checkpoint_error(fmt::format("{}: cannot write: {}", config_file.string(), ec.message()));
  write_safetensors(directory / "model.safetensors", tensors, {{"format", "pt"}});
}

void load_parameters(const hf_checkpoint& checkpoint, parameter_store& store, thread_pool* pool) {
  // Plugins derive their weights' BF16 copies again, even after a load that fails half-way.
  struct changed_on_exit {
    ~changed_on_exit() { parameters_changed(); }
  } changed;
  // Every name and shape first: a checkpoint that does not fit is refused before any read.
  std::vector<std::string> missing, mismatched;
  std::vector<parameter*> loading;
  for (parameter* p : store.all()) {
    if (!checkpoint.contains(p->name)) {
      missing.push_back(p->name);
      continue;
    }
    const auto& stored = checkpoint.entry(p->name);
    if (stored.shape != p->spec.shape) {
      mismatched.push_back(fmt::format("{} is [{}] in the checkpoint, the model needs [{}]",
                                       p->name, fmt::join(stored.shape, ", "),
                                       fmt::join(p->spec.shape, ", ")));
      continue;
    }
    loading.push_back(p);
  }
  if (!missing.empty() || !mismatched.empty()) {
    std::string message =
        fmt::format("{}: the checkpoint does not fit the model", checkpoint.directory().string());
    if (!missing.empty())
      message +=
          fmt::format("; missing {} tensor{}: {}{}", missing.size(), missing.size() == 1 ? "" : "s",
                      fmt::join(missing.begin(),
                                missing.begin() + std::min<std::size_t>(missing.size(), 8), ", "),
                      missing.size() > 8 ? ", ..." : "");
    if (!mismatched.empty()) message += fmt::format("; {}", fmt::join(mismatched, "; "));
    throw checkpoint_error(message);
  }
  // NOTES: each tensor is decoded (BF16, FP8 blocks) and checked on a worker; host parameters
  // take it there, device ones afterwards on this thread (the copy runs on its stream). The first
  // bad tensor in the store's order is the one reported, however the workers ran.
  std::vector<tensor> staged(loading.size());
  std::vector<std::string> problems(loading.size());
  const auto load = [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      parameter* p = loading[static_cast<std::size_t>(i)];
      tensor read = checkpoint.read_f32(p->name);
      const float* v = read.data_as<const float>();  // checked on the host, before the copy
      for (std::int64_t j = 0; j < read.numel(); ++j)
        if (!std::isfinite(v[j])) {
          problems[static_cast<std::size_t>(i)] =
              fmt::format("{}: tensor '{}' holds a non-finite value ({} at {})",
                          checkpoint.directory().string(), p->name, v[j], j);
          break;
        }
      if (!problems[static_cast<std::size_t>(i)].empty()) continue;
      if (p->value.where().is_cpu())
        p->value.copy_from(read);
      else
        staged[static_cast<std::size_t>(i)] = std::move(read);
    }
  };
  const auto count = static_cast<std::int64_t>(loading.size());
  if (pool != nullptr)
    pool->parallel_for(count, 1, load);
  else
    load(0, count);
  for (std::size_t i = 0; i < loading.size(); ++i) {
    if (!problems[i].empty()) throw checkpoint_error(problems[i]);
    if (staged[i].defined()) loading[i]->value.copy_from(staged[i]);
  }
}

}  // namespace troupe
