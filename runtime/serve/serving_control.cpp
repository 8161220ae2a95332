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
#include "runtime/experts/replicated_experts.hpp"
#include "runtime/placement/expert_load.hpp"
#include "runtime/plugin/registry.hpp"
#include "runtime/serve/remote_decode.hpp"

namespace troupe {

serving_control::serving_control(request_engine& engine, std::vector<controlled_instance> instances,
                                 serving_control_options options)
    : engine_(engine),
      instances_(instances),
      options_(std::move(options)),
      swap_(engine, instances),
      rebalance_(engine, std::move(instances)) {
  if (instances_.empty()) fail("serving_control: no instance");
  if (!options_.decode_actors.empty() && options_.runtime == nullptr)
    fail("serving_control: decode actors without the actor runtime");
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

std::vector<std::size_t> serving_control::live_decode_processes() const {
  const auto lost = options_.lost ? options_.lost->ranks() : std::map<int, std::string>{};
  std::vector<std::size_t> live;
  for (std::size_t r = 0; r < options_.decode_actors.size(); ++r)
    if (lost.count(static_cast<int>(r) + 1) == 0) live.push_back(r);
  return live;
}

std::string serving_control::decode_process(std::size_t r) const {
  return fmt::format("decode process rank {} ({})", r + 1, options_.decode_hosts.at(r));
}

control_reply serving_control::status() const {
  std::lock_guard lock(state_);
  nlohmann::json plugins = nlohmann::json::object();
  for (const plugin_kind role : {plugin_kind::attention, plugin_kind::moe, plugin_kind::mtp})
    if (const auto library = swap_.running(role))
      plugins[std::string(name_of(role))] = describe(*library);
  nlohmann::json engines = nlohmann::json::array();
  for (const controlled_instance& i : instances_) engines.push_back(i.engine);
  nlohmann::json decode = nlohmann::json::array();
  nlohmann::json experts = nlohmann::json::array();
  const std::map<int, std::string> lost =
      options_.lost ? options_.lost->ranks() : std::map<int, std::string>{};
  const auto process = [&lost](int rank, const std::string& host) {
    const auto it = lost.find(rank);
    nlohmann::json entry{
        {"rank", rank}, {"host", host}, {"state", it == lost.end() ? "running" : "lost"}};
    if (it != lost.end()) entry["error"] = it->second;
    return entry;
  };
  const auto decode_count = static_cast<int>(options_.decode_hosts.size());
  for (int r = 0; r < decode_count; ++r)
    decode.push_back(process(r + 1, options_.decode_hosts[static_cast<std::size_t>(r)]));
  for (std::size_t r = 0; r < options_.expert_hosts.size(); ++r)
    experts.push_back(process(1 + decode_count + static_cast<int>(r), options_.expert_hosts[r]));
  const bool shards = rebalance_.has_shards();
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
           {"expert_processes", experts},
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
  std::lock_guard one(command_);
  std::optional<plugin_kind> role = parse_plugin_kind(wanted);
  for (const plugin_kind kind : {plugin_kind::attention, plugin_kind::moe, plugin_kind::mtp}) {
    const auto library = swap_.running(kind);
    if (!role && library && library->name == wanted) role = kind;
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
  const std::shared_ptr<const plugin_library> before = swap_.running(*role);

  // Every process prepares (this one first: its refusal bothers no other), then all commit; one
  // that cannot prepare makes every other drop what it built. Lost decode processes are left out.
  std::int64_t replaced = 0;
  try {
    replaced = swap_.prepare(*role, path);
  } catch (const engine_stopping& e) {
    return swap_failed(*role, path, 503, e.what());
  } catch (const nothing_to_swap& e) {
    return swap_failed(*role, path, 409, e.what());
  } catch (const std::exception& e) {
    return swap_failed(*role, path, 422, e.what());
  }
  std::vector<std::size_t> remotes;  // decode processes that prepared
  std::string refusal;
  if (!options_.decode_actors.empty()) {
    scoped_actor self(*options_.runtime);
    for (const std::size_t r : live_decode_processes()) {
      if (!refusal.empty()) break;
      try {
        replaced += self.ask(options_.decode_actors[r],
                             decode_swap_prepare{std::string(name_of(*role)), path},
                             decode_process(r), std::chrono::minutes(2));
        remotes.push_back(r);
      } catch (const std::exception& e) {
        refusal = e.what();
      }
    }
    if (!refusal.empty()) {
      for (const std::size_t r : remotes) try {
          self.ask(options_.decode_actors[r], decode_swap_finish{false}, "abort",
                   std::chrono::minutes(1));
        } catch (const std::exception&) {
          // It drops what it prepared at its next prepare, or when it ends.
        }
      swap_.abort();
      return swap_failed(*role, path, 422, refusal);
    }
  }
  double pause = 0.0;
  try {
    pause = swap_.commit();
    if (!remotes.empty()) {
      scoped_actor self(*options_.runtime);
      for (const std::size_t r : remotes)
        self.ask(options_.decode_actors[r], decode_swap_finish{true},
                 fmt::format("commit on decode process rank {}", r + 1), std::chrono::minutes(1));
    }
  } catch (const std::exception& e) {
    // This process or a decode process swapped and another did not: the server now runs two
    // builds of the plugin, which compute the same for identical builds only.
    return swap_failed(*role, path, 500,
                       fmt::format("the swap was committed in part ({}): restart the server to "
                                   "run one build everywhere",
                                   e.what()));
  }
  nlohmann::json entry{{"role", std::string(name_of(*role))},
                       {"outcome", "swapped"},
                       {"from", before ? describe(*before) : nlohmann::json()},
                       {"to", describe(*swap_.running(*role))},
                       {"instances", replaced},
                       {"processes", 1 + remotes.size()},
                       {"pause_seconds", pause}};
  std::lock_guard lock(state_);
  swaps_.push_back(entry);
  return {200, entry};
}

control_reply serving_control::rebalance(const nlohmann::json& request) {
  if (!rebalance_.has_shards())
    return control_error(409,
                         "this server has no expert shards ([serve] expert_shards, "
                         "--expert-shards): its experts cannot move");
  const bool given = request.is_object() && request.contains("load");
  std::lock_guard one(command_);
  layer_expert_load load;
  if (given) {
    try {
      load = requested_expert_load(request.at("load"), rebalance_.layers(), options_.experts);
    } catch (const error& e) {
      return control_error(400, e.what());
    }
  }
  {
    std::lock_guard lock(state_);
    if (draining_) return control_error(503, "the server is draining");
  }
  const auto failed = [this](int status, const std::string& why) {
    std::lock_guard lock(state_);
    rebalances_.push_back({{"outcome", "failed"}, {"error", why}});
    return control_error(status, why);
  };
  rebalance_outcome done;
  try {
    done = rebalance_.run(given ? &load : nullptr);
  } catch (const engine_stopping& e) {
    return failed(503, e.what());
  } catch (const std::exception& e) {
    return failed(422, e.what());
  }
  // Then each decode process's instances, with their own steps held.
  std::vector<std::string> refusals;
  if (!options_.decode_actors.empty()) {
    scoped_actor self(*options_.runtime);
    for (const std::size_t r : live_decode_processes()) {
      const std::string& host = options_.decode_hosts.at(r);
      try {
        const auto reply =
            nlohmann::json::parse(self.ask(options_.decode_actors[r], decode_rebalance{given, load},
                                           decode_process(r), std::chrono::minutes(2)));
        for (const auto& [engine, report] : reply.at("instances").items())
          done.instances[fmt::format("{}/{}", host, engine)] = report;
        done.moved += reply.at("moved").get<std::int64_t>();
        done.bytes += reply.at("bytes").get<std::int64_t>();
        done.pause_seconds = std::max(done.pause_seconds, reply.at("pause_seconds").get<double>());
      } catch (const std::exception& e) {
        refusals.push_back(e.what());
      }
    }
  }
  if (!refusals.empty())
    return failed(422, fmt::format("{} (this process's instances and the other decode processes' "
                                   "were re-placed)",
                                   fmt::join(refusals, "; ")));
  const bool changed = std::any_of(done.instances.begin(), done.instances.end(),
                                   [](const nlohmann::json& i) { return i["outcome"] == "moved"; });
  nlohmann::json entry{{"outcome", changed ? "moved" : "unchanged"},
                       {"load", given ? "given" : "observed"},
                       {"moved", done.moved},
                       {"bytes", done.bytes},
                       {"pause_seconds", done.pause_seconds},
                       {"instances", done.instances}};
  std::lock_guard lock(state_);
  rebalances_.push_back(
      {{"outcome", entry["outcome"]}, {"moved", done.moved}, {"bytes", done.bytes}});
  return {200, entry};
}

}  // namespace troupe
