#include "runtime/train/training_control.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/core/error.hpp"
#include "runtime/core/input_limits.hpp"
#include "runtime/job/hot_swap.hpp"
#include "runtime/placement/expert_load.hpp"
#include "runtime/train/expert_rebalance.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

/// How long a control request waits for the step loop to reach a boundary.
constexpr std::chrono::minutes boundary_timeout{10};

/// The plugin serving a role; null: the runtime's built-in GEMM in `builtin`.
nlohmann::json describe(const plugin_library* library, precision builtin) {
  if (library == nullptr)
    return {{"plugin", "builtin"}, {"version", to_string(builtin)}, {"generation", 0}};
  return troupe::describe(*library);
}

std::string one_line(const plugin_library* library, precision builtin) {
  if (library == nullptr)
    return fmt::format("the built-in {} GEMM", builtin == precision::bf16 ? "BF16" : "FP32");
  return fmt::format("'{}' {} (generation {}, {})", library->name, library->version,
                     library->generation, library->file.string());
}

/// The swap request's "builtin": none (absent or false: a library swap), fp32 (true or "fp32")
/// or bf16 ("bf16"). Throws naming the field.
std::optional<precision> requested_builtin(const nlohmann::json& request) {
  if (!request.is_object() || !request.contains("builtin")) return std::nullopt;
  const nlohmann::json& value = request.at("builtin");
  if (value.is_boolean())
    return value.get<bool>() ? std::optional<precision>(precision::fp32) : std::nullopt;
  if (value == "fp32") return precision::fp32;
  if (value == "bf16") return precision::bf16;
  fail(
      "the swap request: \"builtin\" (the built-in GEMM's precision) must be true, \"fp32\" or "
      "\"bf16\", got {}",
      value.dump());
}

/// The first stage (replica) or expert shard of `topo` placed on the CPU, as the topology's
/// checks name it; empty when all are on GPUs.
std::string first_on_the_cpu(const topology& topo) {
  for (std::size_t i = 0; i < topo.stages.size(); ++i) {
    const auto& replicas = topo.stages[i].replicas;
    for (std::size_t r = 0; r < replicas.size(); ++r)
      if (!replicas[r].where.is_cuda())
        return fmt::format("stage {}{}", i, topo.data > 1 ? fmt::format(" replica {}", r) : "");
  }
  for (std::size_t i = 0; i < topo.expert_shards.size(); ++i)
    if (!topo.expert_shards[i].place.where.is_cuda()) return fmt::format("expert shard {}", i);
  return {};
}

}  // namespace

training_control::training_control(const topology& topo, const training_options& options,
                                   job_process& process, training_roles& roles,
                                   const run_standing& standing, training_checkpoints& checkpoints,
                                   training_metrics& metrics, active_plugins active)
    : topo_(topo),
      options_(options),
      process_(process),
      roles_(roles),
      standing_(standing),
      checkpoints_(checkpoints),
      metrics_(metrics),
      active_(std::move(active)),
      builtin_gemm_(builtin_gemm_precision(topo)),
      queue_(std::make_unique<job_control>()) {
  const std::string name = options.job_name.empty() ? topo.name : options.job_name;
  directory_ = std::make_unique<job_directory>(
      options.run_directory.empty() ? default_run_directory() : options.run_directory,
      name.empty() ? std::string("troupe") : name, !options.job_name.empty());
  // The endpoint's threads read these, never roles_.placement (the coordinator changes it).
  for (const auto& [layer, lists] : roles_.placement.layers) moe_layers_.push_back(layer);
  auto at_boundary = [this](boundary_work work) {
    return queue_->at_step_boundary(std::move(work), boundary_timeout);
  };
  std::map<std::string, control_command> commands{
      {"status",
       [this](const nlohmann::json&) {
         return control_reply{200, queue_->status()};
       }},
      {"pause", [this](const nlohmann::json&) { return set_paused(true); }},
      {"resume", [this](const nlohmann::json&) { return set_paused(false); }},
      {"checkpoint",
       [this, at_boundary](const nlohmann::json&) {
         return at_boundary([this](blocking_actor& self) {
           const fs::path written = checkpoints_.write(self);
           publish_status();
           return control_reply{
               200, {{"checkpoint", written.string()}, {"step", standing_.last_completed}}};
         });
       }},
      {"swap", [this](const nlohmann::json& request) { return request_swap(request); }},
      {"rebalance",
       [this, at_boundary](const nlohmann::json& request) {
         if (moe_layers_.empty())
           return control_error(409, "this job has no expert shards: its experts cannot move");
         layer_expert_load load;
         if (request.is_object() && request.contains("load")) {
           try {
             load = requested_expert_load(request.at("load"), moe_layers_,
                                          topo_.model.n_routed_experts);
           } catch (const error& e) {
             return control_error(400, e.what());
           }
         }
         const bool given = request.is_object() && request.contains("load");
         return at_boundary([this, load = std::move(load), given](blocking_actor& self) {
           return rebalance(self, given ? load : observed_);
         });
       }},
  };
  endpoint_ = std::make_unique<control_server>(
      topo.control.host, topo.control.port, directory_->token(), std::move(commands),
      *process.metrics().registry(), [this](const std::string& line) { event(line); });
  directory_->publish(endpoint_->url(), topo.file.string());
  publish_status();
  event(fmt::format("control {} (troupe ctl {} status; token in {})", endpoint_->url(),
                    directory_->name(), directory_->token_file().string()));
}

training_control::~training_control() {
  stop("the job ended");
}

std::string training_control::url() const {
  return endpoint_ ? endpoint_->url() : std::string();
}

void training_control::stop(const std::string& why) {
  // Pending requests get their answer before the endpoint's threads are joined.
  queue_->close(why);
  endpoint_.reset();
  directory_.reset();
}

void training_control::event(const std::string& what) const {
  if (options_.on_event) options_.on_event(what);
}

control_reply training_control::set_paused(bool pause) {
  return queue_->at_step_boundary(
      [this, pause](blocking_actor&) {
        if (paused_ != pause)
          event(fmt::format("{} after step {} (troupe ctl)", pause ? "paused" : "resumed",
                            standing_.last_completed));
        paused_ = pause;
        metrics_.set_paused(pause);
        publish_status();
        return control_reply{200, {{"paused", pause}, {"step", standing_.last_completed}}};
      },
      boundary_timeout);
}

void training_control::at_step_boundary(blocking_actor& self, const std::atomic<bool>& stop) {
  for (;;) {
    queue_->run_queued(self);
    if (!paused_ || stop.load(std::memory_order_relaxed)) return;
    // A stop signal cannot wake the wait: look again every 100 ms.
    queue_->wait_for_work(std::chrono::milliseconds(100));
  }
}

void training_control::after_step(std::int64_t step, const expert_load& load) {
  for (const auto& [layer, counts] : load) {
    auto& total = observed_[layer];
    total.resize(std::max(total.size(), counts.size()), 0);
    for (std::size_t e = 0; e < counts.size(); ++e) total[e] += counts[e];
  }
  if (options_.pause_after == step) {
    paused_ = true;
    metrics_.set_paused(true);
    event(fmt::format("paused after step {} (--pause-after); troupe ctl {} resume goes on", step,
                      directory_->name()));
  }
  publish_status();
}

void training_control::publish_status() {
  nlohmann::json serving = nlohmann::json::object();
  for (const auto& [role, library] : active_)
    serving[std::string(name_of(role))] = describe(library.get(), builtin_gemm_);
  cluster* processes = process_.processes();
  queue_->set_status({{"job", directory_->name()},
                      {"pid", static_cast<long>(::getpid())},
                      {"topology", topo_.file.string()},
                      {"state", paused_ ? "paused" : "running"},
                      {"paused", paused_},
                      {"step", standing_.last_completed},
                      {"total_steps", standing_.total_steps},
                      {"loss", standing_.last_loss},
                      {"tokens_per_s", standing_.last_tokens_per_s},
                      {"last_checkpoint", standing_.last_written.string()},
                      {"metrics_url", process_.metrics_url()},
                      {"processes", processes ? processes->world() : 1},
                      {"plugins", serving},
                      {"swaps", swap_history_},
                      {"rebalances", rebalance_history_}});
}

control_reply training_control::request_swap(const nlohmann::json& request) {
  // The endpoint's thread checks the request; the swap runs on the coordinator.
  std::string wanted, library_path;
  std::optional<precision> builtin;
  try {
    wanted = json_string(request, "plugin", "", "the swap request");
    builtin = requested_builtin(request);
    library_path = json_string(request, "library", "", "the swap request");
  } catch (const error& e) {
    return control_error(400, e.what());
  }
  std::optional<plugin_kind> role = parse_plugin_kind(wanted);
  const nlohmann::json current = queue_->status().value("plugins", nlohmann::json::object());
  for (const auto& [kind, entry] : current.items())
    if (!role && entry.value("plugin", std::string()) == wanted) role = parse_plugin_kind(kind);
  if (!role)
    return control_error(400, fmt::format("plugin '{}': name a role (attention, moe, mtp, gemm) "
                                          "or a plugin the job runs ({})",
                                          wanted, current.dump()));
  if (builtin.has_value() == !library_path.empty())
    return control_error(
        400, "give either \"library\": PATH or \"builtin\": true, \"fp32\" or \"bf16\"");
  if (builtin && *role != plugin_kind::gemm)
    return control_error(400, "only the gemm role has a built-in implementation (fp32 or bf16)");
  // As the topology's precision "bf16": every stage and expert shard on a GPU.
  if (builtin == precision::bf16)
    if (const std::string on_cpu = first_on_the_cpu(topo_); !on_cpu.empty())
      return control_error(
          409, fmt::format("{} is on the CPU, but the built-in bf16 GEMM computes on a GPU's "
                           "tensor cores and the CPU has no BF16 path: swap to the built-in fp32 "
                           "GEMM (\"builtin\": \"fp32\", troupe ctl --builtin fp32) or a GEMM "
                           "plugin",
                           on_cpu));
  return queue_->at_step_boundary(
      [this, role = *role, library_path, in = builtin.value_or(precision::fp32)](
          blocking_actor& self) { return swap_plugin(self, role, library_path, in); },
      boundary_timeout);
}

control_reply training_control::swap_plugin(blocking_actor& self, plugin_kind role,
                                            const std::string& library_path, precision builtin) {
  // The step loop is held from here, loading the library included.
  const auto start = std::chrono::steady_clock::now();
  const std::shared_ptr<const plugin_library> before =
      active_.count(role) != 0 ? active_[role] : nullptr;
  const precision builtin_before = builtin_gemm_;
  std::shared_ptr<const plugin_library> library;  // null: the built-in GEMM in `builtin`
  auto failed = [&](int status, const std::string& why) {
    metrics_.record_swap(role, false, 0.0);
    event(fmt::format("swap of the {} plugin failed; the job goes on with {}: {}", name_of(role),
                      one_line(before.get(), builtin_before), why));
    swap_history_.push_back(
        {{"step", standing_.last_completed},
         {"role", std::string(name_of(role))},
         {"outcome", "failed"},
         {"to", library || library_path.empty() ? describe(library.get(), builtin)
                                                : nlohmann::json{{"library", library_path}}},
         {"error", why}});
    publish_status();
    return control_error(status, why);
  };
  if (role != plugin_kind::gemm && active_.count(role) == 0)
    return failed(409, fmt::format("this job's model uses no {} plugin", name_of(role)));
  // The holders of every process take part: ranks for every role, expert shards for moe and
  // for the GEMM (each process switches its own provider once).
  named_actors holders =
      role == plugin_kind::moe || role == plugin_kind::gemm ? roles_.holders() : roles_.stages();
  const plugin_swap_order order{role, library_path, ++swaps_ordered_, builtin};
  std::int64_t instances = 0;
  try {
    // Loaded and checked here first: a library that fails to load bothers nobody else.
    library = process_.plugins()->library_for(order);
  } catch (const std::exception& e) {
    return failed(422, e.what());
  }
  try {
    // A holder that fails to commit leaves the model half swapped: that error goes on and stops
    // the job, which resumes from its last checkpoint.
    instances = swap_everywhere(self, holders, order);
  } catch (const swap_refused& e) {
    return failed(e.why() == swap_refused::reason::no_instances ? 409 : 422, e.what());
  }
  active_[role] = library;
  if (!library) builtin_gemm_ = builtin;
  const double pause =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  metrics_.set_plugin(role, library.get(), builtin_gemm_);
  metrics_.record_swap(role, true, pause);
  event(
      fmt::format("swapped the {} plugin after step {}: {} -> {} (instances replaced: {}; the "
                  "step loop paused {:.1f} ms)",
                  name_of(role), standing_.last_completed, one_line(before.get(), builtin_before),
                  one_line(library.get(), builtin_gemm_), instances, pause * 1e3));
  nlohmann::json entry{{"step", standing_.last_completed},
                       {"role", std::string(name_of(role))},
                       {"outcome", "swapped"},
                       {"from", describe(before.get(), builtin_before)},
                       {"to", describe(library.get(), builtin_gemm_)},
                       {"instances", instances},
                       {"pause_seconds", pause}};
  swap_history_.push_back(entry);
  publish_status();
  return {200, entry};
}

control_reply training_control::rebalance(blocking_actor& self, const layer_expert_load& load) {
  // Node-limited routing routes by the hosts the topology put the experts on.
  if (topo_.max_nodes_per_token > 0)
    return control_error(
        409, fmt::format("the job routes each token to at most {} hosts "
                         "(parallel.max_nodes_per_token) by where the topology put the experts; "
                         "a rebalance would move experts between hosts under the routers",
                         topo_.max_nodes_per_token));
  // EPLB gives every shard the same number of experts: shards the topology made unequal on
  // purpose (a smaller device) would be evened out.
  for (const auto& [layer, lists] : roles_.placement.layers)
    for (const auto& ids : lists)
      if (ids.size() != lists.front().size())
        return control_error(
            409, fmt::format("the expert shards hold different numbers of experts ({} and {} in "
                             "layer {}); a rebalance gives each the same number: give "
                             "[[expert_shards]] lists of equal length to rebalance",
                             lists.front().size(), ids.size(), layer));
  expert_placement target;
  try {
    target = balanced_placement(roles_.placement, load, topo_.model.n_routed_experts,
                                std::max<std::int64_t>(1, topo_.model.n_group));
  } catch (const error& e) {
    return control_error(409, e.what());
  }
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& [layer, lists] : target.layers) {
    auto it = load.find(layer);
    if (it == load.end()) continue;
    layers[std::to_string(layer)] = {{"before", roles_.placement.imbalance(layer, it->second)},
                                     {"after", target.imbalance(layer, it->second)},
                                     {"shards", lists}};
  }
  rebalance_report report;
  try {
    report = move_experts(self, roles_, target);
  } catch (const error& e) {
    event(fmt::format("rebalance after step {} failed; the experts stay where they were: {}",
                      standing_.last_completed, e.what()));
    metrics_.record_rebalance(false, 0, 0, 0.0);
    rebalance_history_.push_back(
        {{"step", standing_.last_completed}, {"outcome", "failed"}, {"error", e.what()}});
    publish_status();
    return control_error(422, e.what());
  }
  observed_.clear();
  metrics_.record_rebalance(true, report.moved, report.bytes, report.seconds);
  metrics_.set_placement(roles_.placement);
  nlohmann::json entry{{"step", standing_.last_completed},
                       {"outcome", report.moved > 0 ? "moved" : "unchanged"},
                       {"moved", report.moved},
                       {"bytes", report.bytes},
                       {"pause_seconds", report.seconds},
                       {"layers", layers}};
  event(fmt::format(
      "rebalanced the experts after step {}: {} moved ({:.1f} MiB of weights and moments; the "
      "step loop paused {:.1f} ms)",
      standing_.last_completed, report.moved, static_cast<double>(report.bytes) / (1 << 20),
      report.seconds * 1e3));
  rebalance_history_.push_back(entry);
  publish_status();
  return {200, entry};
}

}  // namespace troupe
