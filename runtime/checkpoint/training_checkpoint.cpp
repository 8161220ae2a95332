#include "runtime/checkpoint/training_checkpoint.hpp"

#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/checkpoint/safetensors.hpp"
#include "runtime/core/input_limits.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

/// Writes `text` to `file` through a temporary file and a rename.
void write_atomically(const fs::path& file, const std::string& text) {
  const fs::path temporary = file.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw checkpoint_error(fmt::format("{}: cannot write", temporary.string()));
  }
  fs::rename(temporary, file);
}

}  // namespace

std::string checkpoint_name(std::int64_t step) {
  return fmt::format("step-{:06d}", step);
}

void write_trainer_state(const fs::path& file, const trainer_state& state) {
  nlohmann::json j = {
      {"step", state.step},
      {"total_steps", state.total_steps},
      {"seed", state.seed},
      {"data_position",
       {{"epoch", state.data.epoch},
        {"document", state.data.document},
        {"offset", state.data.offset}}},
      {"tokens_seen", state.tokens_seen},
      {"loss", state.loss},
      {"topology", state.topology},
  };
  if (!state.expert_placement.empty()) {
    nlohmann::json layers = nlohmann::json::object();
    for (const auto& [layer, shards] : state.expert_placement)
      layers[std::to_string(layer)] = shards;
    j["expert_placement"] = layers;
  }
  write_atomically(file, j.dump(2) + "\n");
}

trainer_state read_trainer_state(const fs::path& file) {
  nlohmann::json j;
  try {
    j = read_json_file(file, "trainer state", std::uintmax_t{1} << 20);
  } catch (const troupe::error& e) {
    throw checkpoint_error(e.what());
  }
  // NOTES: every count is bounded well inside 64 bits: an epoch of 2^64-1 is the data stream's
  // "no epoch yet" marker, and a step near 2^63 overflows the step loop's arithmetic.
  constexpr integer_bounds count{0, std::int64_t{1} << 62};
  trainer_state state;
  std::string field;
  try {
    if (!j.is_object()) fail("the trainer state must be a JSON object");
    auto integer = [&](const nlohmann::json& object, const char* key) {
      field = key;
      return json_integer(object.at(key), count, key);
    };
    state.step = integer(j, "step");
    state.total_steps = integer(j, "total_steps");
    field = "seed";
    state.seed = j.at("seed").get<std::uint64_t>();
    if (!j.at("seed").is_number_integer()) fail("seed must be an integer");
    field = "data_position";
    const auto& p = j.at("data_position");
    state.data = {static_cast<std::uint64_t>(integer(p, "epoch")),
                  static_cast<std::uint64_t>(integer(p, "document")),
                  static_cast<std::uint64_t>(integer(p, "offset"))};
    state.tokens_seen = j.contains("tokens_seen") ? integer(j, "tokens_seen") : 0;
    field = "loss";
    state.loss = j.contains("loss") && !j["loss"].is_null() ? j["loss"].get<double>() : 0.0;
    field = "topology";
    state.topology = j.value("topology", std::string());
    if (j.contains("expert_placement")) {
      field = "expert_placement";
      constexpr integer_bounds index{0, 1 << 20};
      const auto& layers = j.at("expert_placement");
      if (!layers.is_object()) fail("expert_placement must map MoE layers to shard lists");
      for (const auto& [key, shards] : layers.items()) {
        field = "expert_placement." + key;
        const std::int64_t layer = json_integer(nlohmann::json::parse(key), index, "layer");
        if (!shards.is_array()) fail("a layer's placement must be a list of expert lists");
        auto& lists = state.expert_placement[layer];
        for (const auto& shard : shards) {
          if (!shard.is_array()) fail("a shard's experts must be a list");
          lists.emplace_back();
          for (const auto& expert : shard)
            lists.back().push_back(json_integer(expert, index, "expert"));
        }
      }
    }
  } catch (const std::exception& e) {
    throw checkpoint_error(fmt::format("{}: field \"{}\" is missing or malformed ({})",
                                       file.string(), field, e.what()));
  }
  return state;
}

std::vector<std::string> write_holder_part(
    const fs::path& directory, const std::string& weights_file, const std::string& optimizer_file,
    const std::vector<std::pair<std::string, tensor>>& weights,
    const std::vector<std::pair<std::string, tensor>>& moments) {
  write_safetensors(directory / weights_file, weights, {{"format", "pt"}});
  write_safetensors(directory / optimizer_file, moments);
  std::vector<std::string> names;
  for (const auto& [name, value] : weights) names.push_back(name);
  return names;
}

void write_weight_index(const fs::path& directory,
                        const std::map<std::string, std::string>& weight_map) {
  std::uint64_t total = 0;
  std::map<std::string, bool> files;
  for (const auto& [name, file] : weight_map) files[file] = true;
  for (const auto& [file, unused] : files) {
    (void)unused;
    const auto contents = safetensors_file::open(directory / file);
    for (const auto& entry : contents.entries()) total += entry.end - entry.begin;
  }
  const nlohmann::json j = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_atomically(directory / "model.safetensors.index.json", j.dump(2) + "\n");
}

fs::path publish_checkpoint(const fs::path& root, const fs::path& partial, std::int64_t step) {
  const fs::path final_dir = root / checkpoint_name(step);
  if (fs::exists(final_dir)) {
    // An older checkpoint of this step (a rerun): moved aside first, so one complete copy exists
    // at every moment.
    const fs::path old = final_dir.string() + ".old";
    fs::remove_all(old);
    fs::rename(final_dir, old);
    fs::rename(partial, final_dir);
    fs::remove_all(old);
  } else {
    fs::rename(partial, final_dir);
  }
  write_atomically(root / "latest", checkpoint_name(step) + "\n");
  return final_dir;
}

fs::path resolve_checkpoint(const fs::path& path) {
  if (fs::is_regular_file(path / "trainer_state.json")) return path;
  const fs::path latest = path / "latest";
  if (fs::is_regular_file(latest)) {
    std::ifstream in(latest);
    std::string name;
    std::getline(in, name);
    const fs::path target = path / name;
    if (name.empty() || !fs::is_regular_file(target / "trainer_state.json"))
      throw checkpoint_error(fmt::format("{}: names \"{}\", which is not a complete checkpoint",
                                         latest.string(), name));
    return target;
  }
  throw checkpoint_error(fmt::format(
      "{}: not a checkpoint (no trainer_state.json) and not a checkpoint directory (no latest)",
      path.string()));
}

std::vector<std::pair<std::string, tensor>> read_tensor_directory(const fs::path& directory) {
  std::vector<std::pair<std::string, tensor>> tensors;
  if (!fs::is_directory(directory)) return tensors;
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(directory))
    if (entry.path().extension() == ".safetensors") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    const auto contents = safetensors_file::open(file);
    for (const auto& entry : contents.entries())
      tensors.emplace_back(entry.name, contents.get(entry.name));
  }
  return tensors;
}

}  // namespace troupe
