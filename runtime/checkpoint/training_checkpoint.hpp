#pragma once

// Training checkpoints on disk. One checkpoint is a directory:
//
//   step-000050/
//     config.json                          the model's Hugging Face config
//     model-0000I-of-0000N.safetensors     weights, one file per actor that holds some
//     model.safetensors.index.json         tensor -> file (a Hugging Face sharded checkpoint)
//     optimizer/<actor>.safetensors        AdamW moments ("<name>.exp_avg", "<name>.exp_avg_sq")
//     ema/config.json, ema/model.safetensors   the EMA weights, when the EMA is on
//     trainer_state.json                   step, data position, seed, tokens seen, ...
//
// The router biases (the balancer's state) are kept once, in the model's weights, where Hugging
// Face keeps them (e_score_correction_bias); a resumed balancer starts from them.
//
// It is written as step-000050.partial and renamed when complete, and only then does the
// `latest` file in the checkpoint root name it: a crash mid-write leaves the previous checkpoint
// as it was, and a .partial directory that the next checkpoint replaces.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "runtime/data/token_stream.hpp"
#include "runtime/tensor/tensor.hpp"

namespace troupe {

struct trainer_state {
  std::int64_t step = 0;  ///< optimizer steps done
  std::int64_t total_steps = 0;
  std::uint64_t seed = 0;
  data_position data;
  std::int64_t tokens_seen = 0;
  double loss = 0.0;  ///< of the last step
  std::string topology;
  /// Where the routed experts were (a rebalance may have moved them): per MoE layer, the experts
  /// of each expert shard. Empty: the topology's placement.
  std::map<std::int64_t, std::vector<std::vector<std::int64_t>>> expert_placement;
};

/// "step-000050".
std::string checkpoint_name(std::int64_t step);

void write_trainer_state(const std::filesystem::path& file, const trainer_state& state);
/// Throws checkpoint_error naming the file and the field that is missing or wrong.
trainer_state read_trainer_state(const std::filesystem::path& file);

/// Writes one holder's part of a checkpoint: its weights to `directory`/`weights_file` and its
/// optimizer moments to `directory`/`optimizer_file`. Returns the weights' names.
std::vector<std::string> write_holder_part(
    const std::filesystem::path& directory, const std::string& weights_file,
    const std::string& optimizer_file, const std::vector<std::pair<std::string, tensor>>& weights,
    const std::vector<std::pair<std::string, tensor>>& moments);

/// Writes model.safetensors.index.json for `weight_map` (tensor -> file).
void write_weight_index(const std::filesystem::path& directory,
                        const std::map<std::string, std::string>& weight_map);

/// Renames `partial` to its final name (replacing an older checkpoint of that step) and points
/// `root`/latest at it. Returns the final directory.
std::filesystem::path publish_checkpoint(const std::filesystem::path& root,
                                         const std::filesystem::path& partial, std::int64_t step);

/// The checkpoint `path` names: a checkpoint directory itself, or a root whose `latest` file
/// names one. Throws checkpoint_error when there is none.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& path);

/// Every tensor of the .safetensors files in `directory` (the optimizer moments).
std::vector<std::pair<std::string, tensor>> read_tensor_directory(
    const std::filesystem::path& directory);

}  // namespace troupe
