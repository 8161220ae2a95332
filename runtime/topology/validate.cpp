// The meaning of a topology: parallel sizes against the lists, layer and expert coverage,
// placements on hosts and devices that exist, schedule constraints, value ranges, and plugins.
#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "runtime/core/text.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/schedule/schedule_plan.hpp"
#include "runtime/topology/load.hpp"
#include "runtime/topology/validator_base.hpp"

namespace troupe {

source_position topology::where(const std::string& path) const {
  std::string key = path;
  while (!key.empty()) {
    if (auto it = positions.find(key); it != positions.end()) return it->second;
    const auto cut = key.find_last_of(".[");
    if (cut == std::string::npos) break;
    key.resize(cut);
  }
  return {file.string(), 0, 0};
}

const plugin_choice* topology::plugin_for(plugin_kind role) const {
  for (const auto& choice : plugins)
    if (choice.role == role) return &choice;
  return nullptr;
}

const host_spec* topology::find_host(const std::string& host_name) const {
  for (const auto& host : hosts)
    if (host.name == host_name) return &host;
  return nullptr;
}

std::vector<std::int32_t> topology::shard_nodes() const {
  std::map<std::string, std::int32_t> index;  // host -> node, in [[hosts]] order
  for (const auto& host : hosts)
    for (const auto& shard : expert_shards)
      if (shard.place.host == host.name && !index.count(host.name))
        index.emplace(host.name, static_cast<std::int32_t>(index.size()));
  std::vector<std::int32_t> out;
  for (const auto& shard : expert_shards) out.push_back(index[shard.place.host]);
  return out;
}

std::vector<std::int32_t> topology::node_of_experts() const {
  const auto nodes = shard_nodes();
  if (nodes.empty()) return {};
  std::vector<std::int32_t> node(static_cast<std::size_t>(model.n_routed_experts), -1);
  for (std::size_t s = 0; s < expert_shards.size(); ++s)
    for (int e : expert_shards[s].experts)
      if (e >= 0 && e < model.n_routed_experts) node[static_cast<std::size_t>(e)] = nodes[s];
  return node;
}

namespace detail {

namespace {

namespace fs = std::filesystem;

class topology_validator : validator_base {
 public:
  topology_validator(topology& topo, const topology_load_options& options,
                     std::vector<diagnostic>& out)
      : validator_base(topo, out), options_(options) {}

  void run() {
    check_hosts();
    check_stages();
    check_expert_shards();
    check_node_limit();
    check_schedule();
    check_actors();
    check_train_and_data();
    check_plugins();
  }

 private:
  void check_hosts() {
    std::set<std::string> seen;
    for (std::size_t i = 0; i < t_.hosts.size(); ++i) {
      const auto& host = t_.hosts[i];
      const std::string path = fmt::format("hosts[{}]", i);
      if (host.name.empty()) error(path + ".name", "a host needs a non-empty name");
      if (!seen.insert(host.name).second)
        error(path + ".name", fmt::format("host '{}' is defined twice", host.name));
      if (host.gpus < 0)
        error(path + ".gpus", fmt::format("hosts.gpus must be 0 or more, got {}", host.gpus));
      if (host.address.empty()) error(path + ".address", "a host needs an address");
    }
  }

  /// Fills an empty host with the only host, and checks that host and device exist.
  void check_placement(placement& place, const std::string& path, const std::string& what) {
    if (place.host.empty()) {
      if (t_.hosts.size() > 1) {
        error(path, fmt::format("{} needs `host = ...`: the topology has {} hosts ({})", what,
                                t_.hosts.size(), join(host_names(), ", ")));
        return;
      }
      place.host = t_.hosts.front().name;
    }
    const host_spec* host = t_.find_host(place.host);
    if (host == nullptr) {
      auto names = host_names();
      auto suggestion = nearest_word(place.host, names);
      error(path + ".host",
            fmt::format("{} is placed on host '{}', which does not exist{}; hosts are: {}", what,
                        place.host,
                        suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                        join(names, ", ")));
      return;
    }
    if (place.where.is_cuda() && place.where.index >= host->gpus) {
      error(path + ".device",
            fmt::format("{} is placed on {}, which does not exist on host '{}': {}", what,
                        to_string(place.where), host->name,
                        host->gpus == 0
                            ? std::string("it has no GPUs (set gpus = N in its [[hosts]] entry)")
                        : host->gpus == 1 ? std::string("it has gpus = 1 (cuda:0)")
                                          : fmt::format("it has gpus = {} (cuda:0 to cuda:{})",
                                                        host->gpus, host->gpus - 1)));
    }
  }

  /// model.precision = "bf16" computes on a GPU's tensor cores; the CPU has no BF16 path.
  void check_bf16_device(const placement& place, const std::string& path, const std::string& what) {
    if (t_.train.zero == 1 && place.where.is_cuda() && path.starts_with("stages") &&
        !std::exchange(zero_on_gpu_reported_, true))
      error("train.zero",
            fmt::format(
                "train.zero = 1 exchanges the optimizer's pieces through the host; {} is on {}: "
                "ZeRO-1 between GPUs goes over NCCL with one process per GPU, which jobs do not "
                "run yet",
                what, to_string(place.where)));
    if (t_.gemm_precision != precision::bf16 || place.where.is_cuda()) return;
    error(path, fmt::format("{} is on the CPU, but model.precision = \"bf16\" computes on a GPU's "
                            "tensor cores and the CPU has no BF16 path: place it on cuda:N, or "
                            "choose precision \"fp32\" (or \"fp8\", emulated on the CPU)",
                            what));
  }

  void check_stages() {
    const int layer_count = static_cast<int>(t_.model.num_hidden_layers);
    if (static_cast<int>(t_.stages.size()) != t_.pipeline)
      error(t_.positions.count("parallel.pipeline") ? "parallel.pipeline" : "stages",
            fmt::format("parallel sizes do not multiply out: parallel.pipeline = {} but {} "
                        "[[stages]] are listed; "
                        "list one [[stages]] entry per pipeline stage",
                        t_.pipeline, t_.stages.size()));
    std::map<int, int> owner;  // layer -> stage
    int previous_last = -1;
    for (std::size_t i = 0; i < t_.stages.size(); ++i) {
      auto& stage = t_.stages[i];
      const std::string path = fmt::format("stages[{}]", i);
      if (static_cast<int>(stage.replicas.size()) != t_.data)
        error(path + ".device",
              fmt::format("parallel sizes do not multiply out: stage {} lists {} device(s) or "
                          "host(s) but parallel.data = {}; give one device (or host) per "
                          "data-parallel replica",
                          i, stage.replicas.size(), t_.data));
      for (std::size_t r = 0; r < stage.replicas.size(); ++r) {
        const std::string what =
            fmt::format("stage {}{}", i, t_.data > 1 ? fmt::format(" replica {}", r) : "");
        check_placement(stage.replicas[r], path, what);
        check_bf16_device(stage.replicas[r], path + ".device", what);
      }
      if (stage.layers.empty()) {
        error(path + ".layers", fmt::format("stage {} holds no layers", i));
        continue;
      }
      for (int layer : stage.layers) {
        if (layer >= layer_count) {
          error(path + ".layers",
                fmt::format("layer {} does not exist: the model has {} layers (0-{})", layer,
                            layer_count, layer_count - 1));
          continue;
        }
        auto [it, inserted] = owner.emplace(layer, static_cast<int>(i));
        if (!inserted)
          error(path + ".layers",
                fmt::format("layer {} is covered by two stages: stage {} ({}) and stage {}", layer,
                            it->second,
                            to_string(t_.where(fmt::format("stages[{}].layers", it->second))), i));
      }
      for (std::size_t j = 1; j < stage.layers.size(); ++j) {
        if (stage.layers[j] != stage.layers[j - 1] + 1 && stage.layers[j] != stage.layers[j - 1]) {
          error(path + ".layers", fmt::format("stage {} holds layers {}, which are not consecutive",
                                              i, format_index_ranges(stage.layers)));
          break;
        }
      }
      if (stage.layers.front() < previous_last)
        error(path + ".layers",
              fmt::format("stage {} holds layers {} that come before stage {}'s; stages hold "
                          "consecutive layers in pipeline order",
                          i, format_index_ranges(stage.layers), i - 1));
      previous_last = stage.layers.back();
    }
    std::vector<int> missing;
    for (int layer = 0; layer < layer_count; ++layer)
      if (!owner.count(layer)) missing.push_back(layer);
    if (!missing.empty() && !t_.stages.empty())
      error("stages",
            fmt::format("layer{} {} {} covered by no stage (the model has {} layers: 0-{})",
                        missing.size() > 1 ? "s" : "", format_index_ranges(missing),
                        missing.size() > 1 ? "are" : "is", layer_count, layer_count - 1));
  }

  void check_expert_shards() {
    const int experts = static_cast<int>(t_.model.n_routed_experts);
    const bool moe = t_.model.moe_layer_count() > 0;
    auto& shards = t_.expert_shards;
    if (!moe) {
      if (!shards.empty())
        error("expert_shards",
              "the model has no MoE layers (n_routed_experts = 0 or first_k_dense_replace = "
              "num_hidden_layers), so it has no experts to shard");
      if (t_.expert != 1)
        error("parallel.expert", "parallel.expert must be 1 for a model without MoE layers");
      return;
    }
    if (shards.empty()) {
      if (t_.expert != 1)
        error("parallel.expert",
              fmt::format("parallel sizes do not multiply out: parallel.expert = {} but no "
                          "[[expert_shards]] are listed",
                          t_.expert));
      return;
    }
    if (static_cast<int>(shards.size()) != t_.expert)
      error(t_.positions.count("parallel.expert") ? "parallel.expert" : "expert_shards",
            fmt::format("parallel sizes do not multiply out: parallel.expert = {} but {} "
                        "[[expert_shards]] are listed",
                        t_.expert, shards.size()));
    for (std::size_t i = 0; i < shards.size(); ++i) {
      check_placement(shards[i].place, fmt::format("expert_shards[{}]", i),
                      fmt::format("expert shard {}", i));
      check_bf16_device(shards[i].place, fmt::format("expert_shards[{}].device", i),
                        fmt::format("expert shard {}", i));
    }

    const auto explicit_count = std::count_if(shards.begin(), shards.end(),
                                              [](const auto& s) { return !s.experts.empty(); });
    if (explicit_count == 0) {
      const int count = static_cast<int>(shards.size());
      if (experts % count != 0) {
        error("expert_shards",
              fmt::format("{} routed experts do not split evenly over {} shards; list `experts` "
                          "for each shard",
                          experts, count));
        return;
      }
      for (int i = 0; i < count; ++i)
        for (int e = i * experts / count; e < (i + 1) * experts / count; ++e)
          shards[static_cast<std::size_t>(i)].experts.push_back(e);
      return;
    }
    if (explicit_count != static_cast<long>(shards.size())) {
      error("expert_shards",
            "some [[expert_shards]] list `experts` and some do not: list them on every shard, "
            "or on none for an even split");
      return;
    }
    std::map<int, int> owner;
    for (std::size_t i = 0; i < shards.size(); ++i) {
      const std::string path = fmt::format("expert_shards[{}].experts", i);
      for (int e : shards[i].experts) {
        if (e >= experts) {
          error(path,
                fmt::format("expert {} does not exist: the model has {} routed experts (0-{})", e,
                            experts, experts - 1));
          continue;
        }
        auto [it, inserted] = owner.emplace(e, static_cast<int>(i));
        if (!inserted)
          error(path, fmt::format(
                          "expert {} is in two shards, {} and {}; each expert belongs to one shard",
                          e, it->second, i));
      }
    }
    std::vector<int> missing;
    for (int e = 0; e < experts; ++e)
      if (!owner.count(e)) missing.push_back(e);
    if (!missing.empty())
      error(
          "expert_shards",
          fmt::format("expert{} {} {} covered by no shard (the model has {} routed experts: 0-{})",
                      missing.size() > 1 ? "s" : "", format_index_ranges(missing),
                      missing.size() > 1 ? "are" : "is", experts, experts - 1));
  }

  /// Node-limited routing: the expert shards' hosts must give every token its K experts.
  void check_node_limit() {
    const int m = t_.max_nodes_per_token;
    if (m == 0 || t_.model.moe_layer_count() == 0) return;
    const std::string path = "parallel.max_nodes_per_token";
    const auto node = t_.node_of_experts();
    if (node.empty() || std::count(node.begin(), node.end(), -1) > 0)
      return error(path,
                   "node-limited routing needs the routed experts on [[expert_shards]] (on "
                   "hosts): list them");
    std::map<std::int32_t, std::int64_t> per_node;
    for (std::int32_t n : node) ++per_node[n];
    const std::int64_t nodes = static_cast<std::int64_t>(per_node.size());
    const std::int64_t k = t_.model.num_experts_per_tok;
    if (m >= nodes)
      return warning(path, fmt::format("{} = {} covers every host of the expert shards ({}): "
                                       "routing is not limited",
                                       path, m, nodes));
    std::int64_t fewest = k;
    for (const auto& [n, count] : per_node) fewest = std::min(fewest, count);
    if (fewest * m < k || k / m > 16)
      error(path, fmt::format("{} = {} cannot route a token to its {} experts: a host holds as "
                              "few as {} routed experts, and any {} hosts must hold {} (and K/M "
                              "at most 16)",
                              path, m, k, fewest, m, k));
  }

  void check_schedule() {
    const auto& s = t_.schedule;
    if (s.micro_batches < 1)
      error("schedule.micro_batches",
            fmt::format("schedule.micro_batches must be at least 1, got {}", s.micro_batches));
    if (t_.pipeline >= 1 && s.micro_batches > schedule_plan::max_stage_micro_batches / t_.pipeline)
      error("schedule.micro_batches",
            fmt::format("parallel.pipeline × schedule.micro_batches = {} × {} is more than a "
                        "schedule plan holds ({})",
                        t_.pipeline, s.micro_batches, schedule_plan::max_stage_micro_batches));
    if (s.kind == schedule_kind::dualpipe) {
      if (t_.pipeline % 2 != 0)
        error("schedule.kind",
              fmt::format("DualPipe needs an even pipeline size (each rank holds stages r and "
                          "PP-1-r); parallel.pipeline = {}",
                          t_.pipeline));
      if (s.micro_batches % 2 != 0 || s.micro_batches < 2 * t_.pipeline)
        error("schedule.micro_batches",
              fmt::format("DualPipe needs an even number of micro-batches, at least 2 × pipeline = "
                          "{}; got {}",
                          2 * t_.pipeline, s.micro_batches));
    }
    if (s.kind == schedule_kind::one_f_one_b && s.micro_batches < t_.pipeline &&
        s.micro_batches >= 1)
      warning("schedule.micro_batches",
              fmt::format(
                  "1F1B with {} micro-batches for {} stages leaves stages idle; use at least {}",
                  s.micro_batches, t_.pipeline, t_.pipeline));
  }

  void check_actors() {
    placement ema{t_.ema.host.empty() ? t_.hosts.front().name : t_.ema.host, device::cpu()};
    check_placement(ema, "ema", "the EMA actor");
    t_.ema.host = ema.host;
    if (!(t_.ema.decay > 0.0 && t_.ema.decay < 1.0))
      error("ema.decay", fmt::format("ema.decay must be in (0, 1), got {}", t_.ema.decay));
    if (t_.ema.every < 1)
      error("ema.every", fmt::format("ema.every must be at least 1, got {}", t_.ema.every));
    placement balancer{t_.balancer.host.empty() ? t_.hosts.front().name : t_.balancer.host,
                       device::cpu()};
    check_placement(balancer, "balancer", "the balancer actor");
    t_.balancer.host = balancer.host;
    check_serve(t_, out_);
    if (!(t_.serve.rebalance_interval >= 0.0))
      error("serve.rebalance_interval",
            fmt::format("serve.rebalance_interval must be 0 (never) or more seconds, got {}",
                        t_.serve.rebalance_interval));
    if (!(t_.balancer.gamma >= 0.0))
      error("balancer.gamma",
            fmt::format("balancer.gamma must be 0 or more, got {}", t_.balancer.gamma));
  }

  void positive(const std::string& path, double value) {
    if (!(value > 0.0)) error(path, fmt::format("{} must be positive, got {}", path, value));
  }
  void non_negative(const std::string& path, double value) {
    if (!(value >= 0.0)) error(path, fmt::format("{} must be 0 or more, got {}", path, value));
  }

  void check_train_and_data() {
    const auto& tr = t_.train;
    positive("train.steps", static_cast<double>(tr.steps));
    positive("train.micro_batch_size", static_cast<double>(tr.micro_batch_size));
    if (tr.sequence_length < 2)
      error("train.sequence_length",
            fmt::format("train.sequence_length must be at least 2, got {}", tr.sequence_length));
    positive("train.learning_rate", tr.learning_rate);
    if (!(tr.min_learning_rate >= 0.0 && tr.min_learning_rate <= tr.learning_rate))
      error("train.min_learning_rate",
            fmt::format("train.min_learning_rate must be in [0, learning_rate = {}], got {}",
                        tr.learning_rate, tr.min_learning_rate));
    non_negative("train.warmup_steps", static_cast<double>(tr.warmup_steps));
    non_negative("train.weight_decay", tr.weight_decay);
    for (auto [path, beta] : {std::pair{"train.beta1", tr.beta1}, {"train.beta2", tr.beta2}})
      if (!(beta >= 0.0 && beta < 1.0))
        error(path, fmt::format("{} must be in [0, 1), got {}", path, beta));
    positive("train.epsilon", tr.epsilon);
    non_negative("train.grad_clip", tr.grad_clip);
    non_negative("train.mtp_weight", tr.mtp_weight);
    non_negative("train.balance_loss_alpha", tr.balance_loss_alpha);
    non_negative("train.checkpoint_every", static_cast<double>(tr.checkpoint_every));
    if (tr.checkpoint_dir.empty())
      error("train.checkpoint_dir", "train.checkpoint_dir must not be empty");
    const auto& sc = t_.schedule;
    non_negative("train.batch_ramp_steps", static_cast<double>(tr.batch_ramp_steps));
    if (tr.batch_ramp_steps > 0) {
      const std::int64_t least = sc.kind == schedule_kind::dualpipe ? 2 * t_.pipeline : 1;
      if (tr.batch_ramp_start < least || tr.batch_ramp_start > sc.micro_batches)
        error(
            "train.batch_ramp_start",
            fmt::format("train.batch_ramp_start must be in [{}, schedule.micro_batches = {}]{}, "
                        "got {}",
                        least, sc.micro_batches,
                        sc.kind == schedule_kind::dualpipe ? " (DualPipe needs 2 x pipeline)" : "",
                        tr.batch_ramp_start));
    }
    auto& d = t_.data_source;
    if (!(d.fim_rate >= 0.0 && d.fim_rate <= 1.0))
      error("data.fim_rate", fmt::format("data.fim_rate must be in [0, 1], got {}", d.fim_rate));
    if (d.corpus != "builtin") {
      fs::path file(d.corpus);
      if (!file.is_absolute()) file = t_.file.parent_path() / file;
      file = file.lexically_normal();
      if (!fs::is_regular_file(file) && !fs::is_directory(file))
        error("data.corpus",
              fmt::format("data.corpus: no file or directory {} (use \"builtin\" or a path "
                          "relative to the topology file)",
                          file.string()));
      else
        d.corpus = file.string();
    }
    if (d.tokenizer != "bytes")
      error("data.tokenizer",
            fmt::format("data.tokenizer: \"{}\" is not supported; troupe trains with the "
                        "byte-level tokenizer, \"bytes\"",
                        d.tokenizer));
  }

  void check_plugins() {
    const bool uses_moe = t_.model.moe_layer_count() > 0;
    const bool uses_mtp = t_.model.num_nextn_predict_layers > 0;
    const bool uses_gemm = t_.gemm_precision == precision::fp8;
    std::vector<plugin_choice> used;
    for (auto& choice : t_.plugins) {
      const bool needed = choice.role == plugin_kind::attention ||
                          (choice.role == plugin_kind::moe && uses_moe) ||
                          (choice.role == plugin_kind::mtp && uses_mtp) ||
                          (choice.role == plugin_kind::gemm && uses_gemm);
      const std::string path = fmt::format("plugins.{}", name_of(choice.role));
      if (!needed) {
        if (choice.explicit_choice)
          warning(
              path,
              fmt::format(
                  "plugins.{} is set but this model does not use the role ({}); it is not loaded",
                  name_of(choice.role),
                  choice.role == plugin_kind::moe   ? "no MoE layers"
                  : choice.role == plugin_kind::mtp ? "num_nextn_predict_layers = 0"
                                                    : "model.precision is not fp8"));
        continue;
      }
      if (options_.resolve_plugins) resolve(choice, path);
      used.push_back(choice);
    }
    t_.plugins = std::move(used);
  }

  /// The search path's library for `name`; an entry on it that is no plugin file (a directory,
  /// a symlink loop) is an error at `path` and nothing is found.
  std::optional<fs::path> find_on(const plugin_search_path& search, const std::string& name,
                                  const std::string& path) {
    search_failed_ = false;
    try {
      return search.find(name);
    } catch (const troupe::error& e) {
      error(path, e.what());
      search_failed_ = true;
      return std::nullopt;
    }
  }

  void resolve(plugin_choice& choice, const std::string& path) {
    const auto search = plugin_search_path::standard(t_.file.parent_path(), t_.plugin_search_path);
    if (plugin_search_path::is_path(choice.reference)) {
      fs::path file(choice.reference);
      if (!file.is_absolute()) file = (t_.file.parent_path() / file).lexically_normal();
      if (!fs::is_regular_file(file)) {
        error(path,
              fmt::format("unknown plugin: no library {} (paths are relative to the topology file)",
                          file.string()));
        return;
      }
      choice.resolved = file;
    } else if (auto found = find_on(search, choice.reference, path)) {
      choice.resolved = *found;
    } else if (!search_failed_) {
      std::vector<std::string> available;
      for (const auto& [name, file] : search.available()) available.push_back(name);
      auto suggestion = nearest_word(choice.reference, available);
      const std::string where =
          fmt::format("no {} on the plugin search path [{}]; available: {}",
                      plugin_search_path::library_file_name(choice.reference), search.describe(),
                      available.empty() ? "none" : join(available, ", "));
      if (choice.explicit_choice)
        error(
            path,
            fmt::format(
                "unknown plugin '{}' for role {}{}: {}", choice.reference, name_of(choice.role),
                suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion), where));
      else
        warning("plugins",
                fmt::format(
                    "the default {} plugin '{}' is not installed ({}); `troupe train` will need it",
                    name_of(choice.role), choice.reference, where));
      return;
    }
    if (search_failed_) return;
    if (options_.registry != nullptr) {
      try {
        options_.registry->load(choice.resolved->string(), {choice.role, false});
      } catch (const plugin_load_error& e) {
        error(path, fmt::format("plugin for role {}: {}", name_of(choice.role), e.what()));
      }
    }
  }

  const topology_load_options& options_;
  bool zero_on_gpu_reported_ = false;  ///< train.zero = 1 with a stage on a GPU: said once
  bool search_failed_ = false;         ///< the last find_on met an entry that is no plugin file
};

}  // namespace

void validate_topology(topology& topo, const topology_load_options& options,
                       std::vector<diagnostic>& diagnostics) {
  topology_validator(topo, options, diagnostics).run();
}

}  // namespace detail

}  // namespace troupe
