#include "runtime/train/training_checkpoints.hpp"

#include <fstream>
#include <map>

#include "runtime/balancer/balancer_messages.hpp"
#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/checkpoint/training_checkpoint.hpp"
#include "runtime/ema/ema_messages.hpp"
#include "runtime/job/holder_messages.hpp"

namespace troupe {

namespace fs = std::filesystem;

training_checkpoints::training_checkpoints(const topology& topo, fs::path root,
                                           training_roles& roles, run_standing& standing,
                                           std::function<void(const std::string&)> on_event)
    : topo_(topo),
      root_(std::move(root)),
      roles_(roles),
      standing_(standing),
      on_event_(std::move(on_event)) {}

fs::path training_checkpoints::write(blocking_actor& self) {
  const std::int64_t step = standing_.last_completed;
  fs::create_directories(root_);
  const fs::path partial = root_ / (checkpoint_name(step) + ".partial");
  fs::remove_all(partial);
  fs::create_directories(partial / "optimizer");
  // Each holder writes its part, one after the other (they share the disk).
  const named_actors holders = roles_.holders();
  std::map<std::string, std::string> weight_map;
  for (std::size_t i = 0; i < holders.size(); ++i) {
    const auto& [name, actor] = holders[i];
    checkpoint_order order{partial.string(),
                           fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, holders.size()),
                           fmt::format("optimizer/{}.safetensors", name)};
    const checkpoint_written written = self.ask(actor, order, "checkpoint: " + name);
    for (const auto& w : written.weights) weight_map[w] = order.weights_file;
  }
  write_weight_index(partial, weight_map);
  {
    std::ofstream out(partial / "config.json");
    out << topo_.model.json_text << "\n";
  }
  if (roles_.ema) self.ask(roles_.ema, save_ema{(partial / "ema").string()}, "checkpoint: ema");
  trainer_state state;
  state.step = step;
  state.total_steps = standing_.total_steps;
  state.seed = static_cast<std::uint64_t>(topo_.train.seed);
  state.data = standing_.position;
  state.tokens_seen = standing_.tokens_seen;
  state.loss = standing_.last_loss;
  state.topology = topo_.file.string();
  write_trainer_state(partial / "trainer_state.json", state);
  const fs::path final_dir = publish_checkpoint(root_, partial, step);
  if (on_event_) on_event_(fmt::format("checkpoint {}", final_dir.string()));
  standing_.last_written = final_dir;
  return final_dir;
}

void training_checkpoints::resume(const fs::path& from) {
  const fs::path dir = resolve_checkpoint(from);
  const trainer_state state = read_trainer_state(dir / "trainer_state.json");
  const hf_checkpoint weights = hf_checkpoint::open(dir);
  const auto moments = read_tensor_directory(dir / "optimizer");
  for (auto& entry : roles_.ranks)
    if (entry.setup) entry.setup->rank->load(weights, moments);
  for (auto& s : roles_.shards) {
    if (!s.setup) continue;
    load_parameters(weights, s.setup->shard->parameters());
    s.setup->optimizer->load_state(moments);
  }
  if (roles_.ema_state && fs::exists(dir / "ema")) {
    const hf_checkpoint averages = hf_checkpoint::open(dir / "ema");
    std::vector<std::pair<std::string, tensor>> values;
    for (const auto& name : averages.names()) values.emplace_back(name, averages.read_f32(name));
    roles_.ema_state->tracker->load(values);
  }
  // The balancer owns the router biases; the checkpoint keeps them once, in the weights.
  std::map<std::int64_t, std::vector<float>> biases;
  for (const auto& [layer, name] : roles_.router_bias_names) {
    const tensor values = weights.read_f32(name);
    biases[layer].assign(values.data_as<const float>(),
                         values.data_as<const float>() + values.numel());
  }
  roles_.balancer_state->set_biases(biases);
  if (roles_.data_state) roles_.data_state->stream->seek(state.data);
  standing_.position = state.data;
  standing_.start_step = standing_.last_completed = state.step;
  standing_.tokens_seen = state.tokens_seen;
  if (state.step > standing_.total_steps)
    throw checkpoint_error(fmt::format("{}: the checkpoint is at step {}, past train.steps = {}",
                                       dir.string(), state.step, standing_.total_steps));
  if (on_event_) on_event_(fmt::format("resumed from {} at step {}", dir.string(), state.step));
}

std::string training_checkpoints::with_standing(const std::string& failure) const {
  return fmt::format("{}\nthe last completed step is {}; {}", failure, standing_.last_completed,
                     standing_.last_written.empty()
                         ? std::string("no checkpoint was written in this run")
                         : fmt::format("the last checkpoint is {} (continue with --resume {})",
                                       standing_.last_written.string(), root_.string()));
}

}  // namespace troupe
