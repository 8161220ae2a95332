#include "runtime/train/training_checkpoints.hpp"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "runtime/balancer/balancer_messages.hpp"
#include "runtime/checkpoint/hf_checkpoint.hpp"
#include "runtime/checkpoint/training_checkpoint.hpp"
#include "runtime/ema/ema_messages.hpp"
#include "runtime/exec/convert.hpp"
#include "runtime/job/holder_messages.hpp"

namespace troupe {

namespace fs = std::filesystem;

/// The largest router bias a checkpoint may hold (see resume).
constexpr float max_router_bias = 1000.0f;

training_checkpoints::training_checkpoints(const topology& topo, fs::path root,
                                           training_roles& roles, run_standing& standing,
                                           std::function<void(const std::string&)> on_event)
    : topo_(topo),
      root_(std::move(root)),
      roles_(roles),
      standing_(standing),
      on_event_(std::move(on_event)) {}

std::uintmax_t training_checkpoints::checkpoint_bytes() const {
  const auto parameters = static_cast<std::uintmax_t>(topo_.model.parameter_count());
  return parameters * (4 + 2 + 2 + (topo_.ema.enabled ? 4 : 0));
}

void training_checkpoints::prepare(bool tidy) {
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec || !fs::is_directory(root_))
    throw checkpoint_error(fmt::format("{}: cannot be the checkpoint directory: {}", root_.string(),
                                       ec ? ec.message() : std::string("not a directory")));
  const fs::path probe = root_ / fmt::format(".troupe-write-check-{}", ::getpid());
  {
    std::ofstream out(probe);
    out << "troupe\n";
    out.flush();
    if (!out)
      throw checkpoint_error(fmt::format("{}: cannot write checkpoints there: {}", root_.string(),
                                         std::strerror(errno != 0 ? errno : EACCES)));
  }
  fs::remove(probe, ec);
  if (tidy) {
    std::vector<fs::path> stale;
    for (const auto& item : fs::directory_iterator(root_, ec))
      if (item.path().extension() == ".partial") stale.push_back(item.path());
    for (const auto& dir : stale) fs::remove_all(dir, ec);
    if (!stale.empty() && on_event_)
      on_event_(fmt::format("removed {} unfinished checkpoint{} an earlier run left in {}",
                            stale.size(), stale.size() == 1 ? "" : "s", root_.string()));
  }
  const fs::space_info space = fs::space(root_, ec);
  const std::uintmax_t needed = checkpoint_bytes();
  if (!ec && space.available < needed)
    throw checkpoint_error(fmt::format(
        "{}: one checkpoint of this model needs about {:.1f} MiB, only {:.1f} MiB are free",
        root_.string(), static_cast<double>(needed) / (1 << 20),
        static_cast<double>(space.available) / (1 << 20)));
}

fs::path training_checkpoints::write(blocking_actor& self) {
  const std::int64_t step = standing_.last_completed;
  fs::create_directories(root_);
  const fs::path partial = root_ / (checkpoint_name(step) + ".partial");
  const auto start = std::chrono::steady_clock::now();
  fs::path written;
  try {
    written = write_partial(self, partial);
  } catch (...) {
    // NOTES: a half-written checkpoint is worth nothing and, after a full disk, keeps the disk
    // full: it goes at once (an older complete checkpoint is untouched).
    std::error_code ec;
    fs::remove_all(partial, ec);
    throw;
  }
  if (on_event_) {
    // NOTES: what the step loop waited for (the holders' copies to the host and every file),
    // for the user to weigh against the interval between checkpoints. The checkpoint is
    // published: a file that cannot be measured is left out of the sum, not an error.
    std::uintmax_t bytes = 0;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(written, ec), end; !ec && it != end;
         it.increment(ec)) {
      std::error_code size_ec;
      const std::uintmax_t size = it->is_regular_file(size_ec) ? it->file_size(size_ec) : 0;
      if (!size_ec) bytes += size;
    }
    on_event_(fmt::format(
        "checkpoint {} ({:.2f} GB in {:.1f} s)", written.string(), static_cast<double>(bytes) / 1e9,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()));
  }
  return written;
}

fs::path training_checkpoints::write_partial(blocking_actor& self, const fs::path& partial) {
  const std::int64_t step = standing_.last_completed;
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
    out.flush();
    if (!out)
      throw checkpoint_error(fmt::format("{}: cannot write: {}", (partial / "config.json").string(),
                                         std::strerror(errno)));
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
  state.expert_placement = roles_.placement.layers;
  write_trainer_state(partial / "trainer_state.json", state);
  const fs::path final_dir = publish_checkpoint(root_, partial, step);
  standing_.last_written = final_dir;
  return final_dir;
}

namespace {

/// The keys whose values differ between two model configs, "key: a vs b" each.
std::vector<std::string> config_differences(const model_config& a, const model_config& b) {
  const auto ja = nlohmann::json::parse(complete_json(a));
  const auto jb = nlohmann::json::parse(complete_json(b));
  std::vector<std::string> out;
  for (auto it = ja.begin(); it != ja.end(); ++it)
    if (!jb.contains(it.key()) || jb[it.key()] != it.value())
      out.push_back(fmt::format("{}: {} in the checkpoint, {} in the topology", it.key(),
                                it.value().dump(), jb.value(it.key(), nlohmann::json()).dump()));
  return out;
}

/// NOTES: finite values are the one thing shapes cannot tell; a NaN moment or average would
/// poison every later step, found only by the non-finite check many steps later.
void require_finite(const tensor& t, const std::string& name, const fs::path& file) {
  const tensor values = t.type() == dtype::f32 ? t : convert(t, dtype::f32);
  const float* v = values.data_as<const float>();
  const std::int64_t n = values.numel();
  for (std::int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]))
      throw checkpoint_error(fmt::format("{}: tensor '{}' holds a non-finite value ({} at {})",
                                         file.string(), name, v[i], i));
}

}  // namespace

void training_checkpoints::check_ema(const fs::path& dir, const hf_checkpoint& weights) {
  const hf_checkpoint averages = hf_checkpoint::open(dir / "ema");
  std::vector<std::pair<std::string, tensor>> values;
  for (const auto& name : averages.names()) {
    if (!weights.contains(name))
      throw checkpoint_error(fmt::format("{}: EMA tensor '{}' is no tensor of the model",
                                         (dir / "ema").string(), name));
    if (averages.entry(name).shape != weights.entry(name).shape)
      throw checkpoint_error(fmt::format(
          "{}: EMA tensor '{}' is [{}], the model's is [{}]", (dir / "ema").string(), name,
          fmt::join(averages.entry(name).shape, ", "), fmt::join(weights.entry(name).shape, ", ")));
    values.emplace_back(name, averages.read_f32(name));
    require_finite(values.back().second, name, dir / "ema");
  }
  roles_.ema_state->tracker->load(values);
}

void training_checkpoints::resume(const fs::path& from) {
  const fs::path dir = resolve_checkpoint(from);
  const trainer_state state = read_trainer_state(dir / "trainer_state.json");
  if (state.step > standing_.total_steps)
    throw checkpoint_error(fmt::format("{}: the checkpoint is at step {}, past train.steps = {}",
                                       dir.string(), state.step, standing_.total_steps));
  const hf_checkpoint weights = hf_checkpoint::open(dir);
  if (const auto differences = config_differences(weights.config(), topo_.model);
      !differences.empty())
    throw checkpoint_error(
        fmt::format("{}: the checkpoint is of another model than the "
                    "topology's: {}",
                    dir.string(), fmt::join(differences, "; ")));
  const auto moments = read_tensor_directory(dir / "optimizer");
  for (const auto& [name, value] : moments) require_finite(value, name, dir / "optimizer");
  restore_placement(dir, state.expert_placement);
  try {
    for (auto& entry : roles_.ranks)
      if (entry.setup) entry.setup->rank->load(weights, moments);
    for (auto& s : roles_.shards) {
      if (!s.setup) continue;
      load_parameters(weights, s.setup->shard->parameters());
      s.setup->optimizer->load_state(moments);
    }
  } catch (const checkpoint_error&) {
    throw;
  } catch (const error& e) {
    throw checkpoint_error(fmt::format("{}: {}", dir.string(), e.what()));
  }
  if (roles_.ema_state && fs::exists(dir / "ema")) check_ema(dir, weights);
  // The balancer owns the router biases; the checkpoint keeps them once, in the weights.
  std::map<std::int64_t, std::vector<float>> biases;
  for (const auto& [layer, name] : roles_.router_bias_names) {
    const tensor values = weights.read_f32(name);
    require_finite(values, name, dir);
    biases[layer].assign(values.data_as<const float>(),
                         values.data_as<const float>() + values.numel());
    for (float b : biases[layer])
      if (std::fabs(b) > max_router_bias)
        throw checkpoint_error(fmt::format(
            "{}: router bias '{}' holds {}: beyond ±{}, a bias outweighs every affinity (they lie "
            "in (0, 1)) and routing no longer depends on the tokens",
            dir.string(), name, b, max_router_bias));
  }
  roles_.balancer_state->set_biases(biases);
  if (roles_.data_state) roles_.data_state->stream->seek(state.data);
  standing_.position = state.data;
  standing_.start_step = standing_.last_completed = state.step;
  standing_.tokens_seen = state.tokens_seen;
  if (on_event_) on_event_(fmt::format("resumed from {} at step {}", dir.string(), state.step));
}

void training_checkpoints::restore_placement(
    const fs::path& dir,
    const std::map<std::int64_t, std::vector<std::vector<std::int64_t>>>& saved) {
  if (saved.empty() || roles_.placement.layers.empty()) return;
  const expert_placement placement{saved};
  if (placement == roles_.placement) return;
  std::string misfit;
  if (placement.shards() != roles_.placement.shards())
    misfit = fmt::format("it has {} expert shards, the topology {}", placement.shards(),
                         roles_.placement.shards());
  for (const auto& [layer, lists] : roles_.placement.layers)
    if (misfit.empty() && placement.layers.count(layer) == 0)
      misfit = fmt::format("it does not place MoE layer {}", layer);
  if (misfit.empty() && placement.layers.size() != roles_.placement.layers.size())
    misfit = "it places other layers than the model's MoE layers";
  if (misfit.empty()) {
    try {
      placement.check(topo_.model.n_routed_experts);
    } catch (const error& e) {
      misfit = e.what();
    }
  }
  if (!misfit.empty()) {
    if (on_event_)
      on_event_(
          fmt::format("{}: the expert placement in trainer_state.json does not fit this "
                      "topology ({}); the experts start where the topology puts them",
                      dir.string(), misfit));
    return;
  }
  // Each shard is built anew for its experts (the weights and moments load into it below).
  for (std::size_t s = 0; s < roles_.shards.size(); ++s) {
    auto& setup = roles_.shards[s].setup;
    if (!setup || !setup->rebuild) continue;
    setup->shard =
        setup->rebuild(setup->shard->library(), placement.of_shard(static_cast<std::int64_t>(s)));
    setup->optimizer = std::make_unique<adamw>(setup->optimizer_settings);
    setup->optimizer->attach(setup->shard->parameters());
  }
  for (auto& entry : roles_.ranks)
    if (entry.setup) entry.setup->rank->set_expert_placement(placement.layers);
  if (on_event_)
    on_event_(
        fmt::format("the experts start where the checkpoint's job left them ({} moved from "
                    "the topology's placement)",
                    moves_between(roles_.placement, placement).size()));
  roles_.placement = placement;
}

std::string training_checkpoints::with_standing(const std::string& failure) const {
  return fmt::format("{}\nthe last completed step is {}; {}", failure, standing_.last_completed,
                     standing_.last_written.empty()
                         ? std::string("no checkpoint was written in this run")
                         : fmt::format("the last checkpoint is {} (continue with --resume {})",
                                       standing_.last_written.string(), root_.string()));
}

}  // namespace troupe
