#include "runtime/serve/serving_control.hpp"

#include <unistd.h>

#include <algorithm>
#include <exception>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/core/error.hpp"
#include "runtime/core/input_limits.hpp"
#include "runtime/device/cuda.hpp"
#include "runtime/experts/expert_shard.hpp"
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/model/model_runner.hpp"
#include "runtime/placement/expert_load.hpp"
#include "runtime/plugin/instance.hpp"
#include "runtime/plugin/instance_swap.hpp"
#include "runtime/plugin/registry.hpp"

namespace troupe {

namespace {

nlohmann::json describe(const plugin_library* library) {
  if (library == nullptr) return nullptr;
  return {{"plugin", library->name},
          {"version", library->version},
          {"generation", library->generation},
          {"library", library->file.string()}};
}

std::shared_ptr<const plugin_library>* library_of(model_plugins& plugins, plugin_kind role) {
  switch (role) {
    case plugin_kind::attention:
      return &plugins.attention;
    case plugin_kind::moe:
      return &plugins.moe;
    case plugin_kind::mtp:
      return &plugins.mtp;
    default:
      return nullptr;
  }
}

/// Each MoE layer's shards as lists of the experts they hold.
nlohmann::json shards_of(const replicated_experts& experts) {
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& [layer, lists] : experts.placement().layers)
    layers[std::to_string(layer)] = lists;
  return layers;
}

}  // namespace

serving_control::serving_control(request_engine& engine, std::vector<controlled_instance> instances,
                                 serving_control_options options)
    : engine_(engine), instances_(std::move(instances)), options_(std::move(options)) {
  if (instances_.empty()) fail("serving_control: no instance");
}

std::map<std::string, control_command> serving_control::commands() {
  return {{"status", [this](const nlohmann::json&) { return status(); }},
          {"swap", [this](const nlohmann::json& request) { return swap(request); }},
          {"rebalance", [this](const nlohmann::json& request) { return rebalance(request); }}};
}

void serving_control::set_draining() {
  std::lock_guard lock(state_);
  draining_ = true;
}

control_reply serving_control::status() const {
  std::lock_guard lock(state_);
  nlohmann::json plugins = nlohmann::json::object();
  model_plugins& first = *instances_.front().plugins;
  for (const plugin_kind role : {plugin_kind::attention, plugin_kind::moe, plugin_kind::mtp})
    if (const auto* library = library_of(first, role); library != nullptr && *library)
      plugins[std::string(name_of(role))] = describe(library->get());
  nlohmann::json engines = nlohmann::json::array();
  for (const controlled_instance& i : instances_) engines.push_back(i.engine);
  nlohmann::json decode = nlohmann::json::array();
  const std::map<int, std::string> lost =
      options_.lost ? options_.lost->ranks() : std::map<int, std::string>{};
  for (std::size_t r = 0; r < options_.decode_hosts.size(); ++r) {
    const int rank = static_cast<int>(r) + 1;
    const auto it = lost.find(rank);
    nlohmann::json entry{{"rank", rank},
                         {"host", options_.decode_hosts[r]},
                         {"state", it == lost.end() ? "running" : "lost"}};
    if (it != lost.end()) entry["error"] = it->second;
    decode.push_back(entry);
  }
  const bool shards = instances_.front().experts != nullptr;
  return {200,
          {{"job", options_.job},
           {"kind", "server"},
           {"pid", static_cast<long>(::getpid())},
           {"topology", options_.topology},
           {"state", draining_ ? "draining" : "serving"},
           {"model", options_.model},
           {"url", options_.url},
           {"queued", engine_.queued()},
           {"decoding", engine_.decoding()},
           {"instances", engines},
           {"decode_processes", decode},
           {"expert_shards", shards},
           {"plugins", plugins},
           {"swaps", swaps_},
           {"rebalances", rebalances_}}};
}

control_reply serving_control::swap_failed(plugin_kind role, const std::string& library, int status,
                                           const std::string& why) {
  std::lock_guard lock(state_);
  swaps_.push_back({{"role", std::string(name_of(role))},
                    {"outcome", "failed"},
                    {"to", {{"library", library}}},
                    {"error", why}});
  return control_error(status, why);
}

control_reply serving_control::swap(const nlohmann::json& request) {
  std::string wanted, path;
  try {
    wanted = json_string(request, "plugin", "", "the swap request");
    path = json_string(request, "library", "", "the swap request");
  } catch (const error& e) {
    return control_error(400, e.what());
  }
  std::lock_guard one(command_);  // swaps write the libraries read here
  std::optional<plugin_kind> role = parse_plugin_kind(wanted);
  for (const plugin_kind kind : {plugin_kind::attention, plugin_kind::moe, plugin_kind::mtp}) {
    const auto* library = library_of(*instances_.front().plugins, kind);
    if (!role && library != nullptr && *library && (*library)->name == wanted) role = kind;
  }
  if (!role)
    return control_error(400, fmt::format("plugin '{}': name a role (attention, moe, mtp) or a "
                                          "plugin the server runs",
                                          wanted));
  if (*role == plugin_kind::gemm)
    return control_error(400,
                         "a server swaps its attention, moe and mtp plugins; its GEMMs are the "
                         "runtime's");
  if (path.empty())
    return control_error(400, "the swap request: give \"library\": the plugin library's path");
  {
    std::lock_guard lock(state_);
    if (draining_) return control_error(503, "the server is draining");
  }
  if (!options_.decode_hosts.empty())
    return swap_failed(
        *role, path, 409,
        fmt::format("the decode processes on {} would keep the plugin they run: a swap reaches "
                    "this process's instances only, so a server with decode_hosts is not swapped",
                    fmt::join(options_.decode_hosts, ", ")));
  const std::shared_ptr<const plugin_library> before =
      *library_of(*instances_.front().plugins, *role);
  std::size_t slots = 0;
  for (const controlled_instance& i : instances_) slots += i.runner->plugin_slots(*role).size();
  if (!before || slots == 0)
    return swap_failed(
        *role, path, 409,
        *role == plugin_kind::mtp
            ? std::string("no MTP module runs here: the server decodes without --speculative mtp")
            : fmt::format("this server's model uses no {} plugin", name_of(*role)));

  // Loaded (a fresh copy for each instance's registry) before any step is held: a library that
  // does not load, crashes its probe or is of another kind costs the running requests nothing.
  std::vector<std::shared_ptr<const plugin_library>> loaded;
  try {
    plugin_load_options load;
    load.expected_kind = *role;
    load.fresh_copy = true;
    for (const controlled_instance& i : instances_) loaded.push_back(i.registry->load(path, load));
  } catch (const std::exception& e) {
    return swap_failed(*role, path, 422, e.what());
  }
  // The attention plugin of a server reads and writes the KV cache (ABI 1.2's forward_cached):
  // one without it would fail every step.
  if (*role == plugin_kind::attention && !computes_cached(*loaded.front()))
    return swap_failed(*role, path, 422,
                       fmt::format("plugin '{}' ({}) has no cached forward (plugin ABI 1.2 "
                                   "forward_cached): it cannot decode over the KV cache",
                                   loaded.front()->name, path));
  std::int64_t replaced = 0;
  double pause = 0.0;
  try {
    pause = engine_.hold_steps([&] {
      // Every successor first (a failure drops them all: nothing changed), then all in place.
      std::vector<instance_swap> swaps;
      std::vector<std::vector<std::unique_ptr<expert_shard>>> shards(instances_.size());
      for (std::size_t i = 0; i < instances_.size(); ++i) {
        const controlled_instance& instance = instances_[i];
        if (instance.where.is_cuda()) cuda::use_device(instance.where.index);
        swaps.emplace_back(instance.runner->plugin_slots(*role), loaded[i]);
        if (*role == plugin_kind::moe && instance.experts != nullptr)
          shards[i] = instance.experts->shards_on(loaded[i]);
      }
      std::lock_guard lock(state_);  // status reads the libraries
      for (std::size_t i = 0; i < instances_.size(); ++i) {
        replaced += static_cast<std::int64_t>(swaps[i].size());
        swaps[i].commit();
        if (!shards[i].empty()) {
          replaced += static_cast<std::int64_t>(shards[i].size());
          instances_[i].experts->adopt(std::move(shards[i]), loaded[i]);
        }
        *library_of(*instances_[i].plugins, *role) = loaded[i];
      }
    });
  } catch (const engine_stopping& e) {
    return swap_failed(*role, path, 503, e.what());
  } catch (const std::exception& e) {
    return swap_failed(*role, path, 422, e.what());
  }
  nlohmann::json entry{{"role", std::string(name_of(*role))},
                       {"outcome", "swapped"},
                       {"from", describe(before.get())},
                       {"to", describe(loaded.front().get())},
                       {"instances", replaced},
                       {"pause_seconds", pause}};
  std::lock_guard lock(state_);
  swaps_.push_back(entry);
  return {200, entry};
}

control_reply serving_control::rebalance(const nlohmann::json& request) {
  if (instances_.front().experts == nullptr)
    return control_error(409,
                         "this server has no expert shards ([serve] expert_shards, "
                         "--expert-shards): its experts cannot move");
  const bool given = request.is_object() && request.contains("load");
  std::lock_guard one(command_);
  layer_expert_load load;
  if (given) {
    // The layers the shards place: the decoder's MoE layers and the MTP modules'.
    std::vector<std::int64_t> layers;
    for (const auto& [layer, lists] : instances_.front().experts->placement().layers)
      layers.push_back(layer);
    try {
      load = requested_expert_load(request.at("load"), layers, options_.experts);
    } catch (const error& e) {
      return control_error(400, e.what());
    }
  }
  {
    std::lock_guard lock(state_);
    if (draining_) return control_error(503, "the server is draining");
  }
  nlohmann::json per_instance = nlohmann::json::object();
  std::int64_t moved = 0, bytes = 0;
  double pause = 0.0;
  try {
    pause = engine_.hold_steps([&] {
      for (const controlled_instance& i : instances_) {
        const replacement_report report =
            given ? i.experts->rebalance(load) : i.experts->rebalance_observed();
        moved += report.copied;
        bytes += report.bytes;
        per_instance[i.engine] = {{"outcome", report.changed ? "moved" : "unchanged"},
                                  {"moved", report.copied},
                                  {"bytes", report.bytes},
                                  {"seconds", report.seconds},
                                  {"shards", shards_of(*i.experts)}};
      }
    });
  } catch (const std::exception& e) {
    // Each instance re-places on its own: those before the failure keep their new placement.
    std::vector<std::string> done;
    for (const auto& [engine, report] : per_instance.items()) done.push_back(engine);
    const std::string why = done.empty() ? std::string(e.what())
                                         : fmt::format("{} (re-placed before the failure: {})",
                                                       e.what(), fmt::join(done, ", "));
    std::lock_guard lock(state_);
    rebalances_.push_back({{"outcome", "failed"}, {"error", why}});
    return control_error(dynamic_cast<const engine_stopping*>(&e) != nullptr ? 503 : 422, why);
  }
  const bool changed = std::any_of(per_instance.begin(), per_instance.end(),
                                   [](const nlohmann::json& i) { return i["outcome"] == "moved"; });
  nlohmann::json entry{{"outcome", changed ? "moved" : "unchanged"},
                       {"load", given ? "given" : "observed"},
                       {"moved", moved},
                       {"bytes", bytes},
                       {"pause_seconds", pause},
                       {"instances", per_instance}};
  std::lock_guard lock(state_);
  rebalances_.push_back({{"outcome", entry["outcome"]}, {"moved", moved}, {"bytes", bytes}});
  return {200, entry};
}

}  // namespace troupe
