// The training job's control endpoint: status, pause and resume, checkpoints on request, and hot
// swaps of plugins at step boundaries.

#include <unistd.h>

#include <fmt/format.h>

#include "runtime/actor/atoms.hpp"
#include "runtime/core/error.hpp"
#include "runtime/train/train_messages.hpp"
#include "runtime/train/training_job_impl.hpp"

namespace troupe {

namespace {

/// How long a control request waits for the step loop to reach a boundary.
constexpr std::chrono::minutes boundary_timeout{10};

nlohmann::json describe(const plugin_library* library) {
  if (library == nullptr) return {{"plugin", "builtin"}, {"version", "fp32"}, {"generation", 0}};
  return {{"plugin", library->name},
          {"version", library->version},
          {"generation", library->generation},
          {"library", library->file.string()}};
}

std::string one_line(const plugin_library* library) {
  if (library == nullptr) return "the built-in FP32 GEMM";
  return fmt::format("'{}' {} (generation {}, {})", library->name, library->version,
                     library->generation, library->file.string());
}

}  // namespace

void training_job::impl::start_control() {
  if (!coordinates()) return;
  if (topo.control.host.empty()) {
    if (options.pause_after > 0)
      fail(
          "{}: pausing after step {} needs the control endpoint to resume: add [control] listen "
          "= \"127.0.0.1:0\"",
          topo.file.string(), options.pause_after);
    return;
  }
  control = std::make_unique<job_control>();
  const std::string name = options.job_name.empty() ? topo.name : options.job_name;
  job_dir = std::make_unique<job_directory>(
      options.run_directory.empty() ? default_run_directory() : options.run_directory,
      name.empty() ? std::string("troupe") : name, !options.job_name.empty());
  auto at_boundary = [this](boundary_work work) {
    return control->at_step_boundary(std::move(work), boundary_timeout);
  };
  auto set_paused = [this, at_boundary](bool pause) {
    return at_boundary([this, pause](caf::blocking_actor*) {
      if (paused != pause)
        event(fmt::format("{} after step {} (troupe ctl)", pause ? "paused" : "resumed",
                          last_completed));
      paused = pause;
      train_metrics->set_paused(pause);
      publish_status();
      return control_reply{200, {{"paused", pause}, {"step", last_completed}}};
    });
  };
  std::map<std::string, control_command> commands{
      {"status",
       [this](const nlohmann::json&) {
         return control_reply{200, control->status()};
       }},
      {"pause", [set_paused](const nlohmann::json&) { return set_paused(true); }},
      {"resume", [set_paused](const nlohmann::json&) { return set_paused(false); }},
      {"checkpoint",
       [this, at_boundary](const nlohmann::json&) {
         return at_boundary([this](caf::blocking_actor* self) {
           const fs::path written = write_checkpoint(self, last_completed, last_loss);
           publish_status();
           return control_reply{200, {{"checkpoint", written.string()}, {"step", last_completed}}};
         });
       }},
      {"swap", [this](const nlohmann::json& request) { return request_swap(request); }},
  };
  control_endpoint = std::make_unique<control_server>(
      topo.control.host, topo.control.port, job_dir->token(), std::move(commands),
      *metrics->registry(), [this](const std::string& line) { event(line); });
  job_dir->publish(control_endpoint->url(), topo.file.string());
  publish_status();
  event(fmt::format("control {} (troupe ctl {} status; token in {})", control_endpoint->url(),
                    job_dir->name(), job_dir->token_file().string()));
}

void training_job::impl::stop_control(const std::string& why) {
  // Pending requests get their answer before the endpoint's threads are joined.
  if (control) control->close(why);
  control_endpoint.reset();
  job_dir.reset();
}

void training_job::impl::at_step_boundary(caf::blocking_actor* self,
                                          const std::atomic<bool>& stop) {
  if (!control) return;
  for (;;) {
    control->run_queued(self);
    if (!paused || stop.load(std::memory_order_relaxed)) return;
    // A stop signal cannot wake the wait: look again every 100 ms.
    control->wait_for_work(std::chrono::milliseconds(100));
  }
}

void training_job::impl::after_step(std::int64_t step) {
  if (control && options.pause_after == step) {
    paused = true;
    train_metrics->set_paused(true);
    event(fmt::format("paused after step {} (--pause-after); troupe ctl {} resume goes on", step,
                      job_dir->name()));
  }
  publish_status();
}

void training_job::impl::publish_status() {
  if (!control) return;
  nlohmann::json serving = nlohmann::json::object();
  for (const auto& [role, library] : active)
    serving[std::string(name_of(role))] = describe(library.get());
  control->set_status({{"job", job_dir->name()},
                       {"pid", static_cast<long>(::getpid())},
                       {"topology", topo.file.string()},
                       {"state", paused ? "paused" : "running"},
                       {"paused", paused},
                       {"step", last_completed},
                       {"total_steps", total_steps},
                       {"loss", last_loss},
                       {"tokens_per_s", last_tokens_per_s},
                       {"last_checkpoint", last_written.string()},
                       {"metrics_url", endpoint ? endpoint->url() : std::string()},
                       {"processes", processes ? processes->world() : 1},
                       {"plugins", serving},
                       {"swaps", swap_history}});
}

control_reply training_job::impl::request_swap(const nlohmann::json& request) {
  // The endpoint's thread checks the request; the swap runs on the coordinator.
  const std::string wanted = request.value("plugin", std::string());
  std::optional<plugin_kind> role = parse_plugin_kind(wanted);
  const nlohmann::json current = control->status().value("plugins", nlohmann::json::object());
  for (const auto& [kind, entry] : current.items())
    if (!role && entry.value("plugin", std::string()) == wanted) role = parse_plugin_kind(kind);
  if (!role)
    return control_error(400, fmt::format("plugin '{}': name a role (attention, moe, mtp, gemm) "
                                          "or a plugin the job runs ({})",
                                          wanted, current.dump()));
  const bool builtin = request.value("builtin", false);
  const std::string library_path = request.value("library", std::string());
  if (builtin == !library_path.empty())
    return control_error(400, "give either \"library\": PATH or \"builtin\": true");
  if (builtin && *role != plugin_kind::gemm)
    return control_error(400, "only the gemm role has a built-in implementation (FP32)");
  return control->at_step_boundary(
      [this, role = *role, library_path](caf::blocking_actor* self) {
        return swap_plugin(self, role, library_path);
      },
      boundary_timeout);
}

control_reply training_job::impl::swap_plugin(caf::blocking_actor* self, plugin_kind role,
                                              const std::string& library_path) {
  // The step loop is held from here, loading the library included.
  const auto start = std::chrono::steady_clock::now();
  const std::shared_ptr<const plugin_library> before =
      active.count(role) != 0 ? active[role] : nullptr;
  std::shared_ptr<const plugin_library> library;  // null: the built-in FP32 GEMM
  auto failed = [&](int status, const std::string& why) {
    train_metrics->record_swap(role, false, 0.0);
    event(fmt::format("swap of the {} plugin failed; the job goes on with {}: {}", name_of(role),
                      one_line(before.get()), why));
    swap_history.push_back(
        {{"step", last_completed},
         {"role", std::string(name_of(role))},
         {"outcome", "failed"},
         {"to", library ? describe(library.get()) : nlohmann::json{{"library", library_path}}},
         {"error", why}});
    publish_status();
    return control_error(status, why);
  };
  if (role != plugin_kind::gemm && active.count(role) == 0)
    return failed(409, fmt::format("this job's model uses no {} plugin", name_of(role)));
  // The holders of every process take part: ranks for every role, expert shards for moe and
  // for the GEMM (each process switches its own provider once).
  std::vector<std::pair<std::string, caf::actor>> holders;
  for (const auto& entry : ranks) holders.emplace_back(entry.name, entry.actor);
  if (role == plugin_kind::moe || role == plugin_kind::gemm)
    for (const auto& s : shards) holders.emplace_back(s.name, s.actor);
  const plugin_swap_order order{role, library_path, ++swaps_ordered};
  try {
    // Loaded and checked here first: a library that fails to load bothers nobody else.
    library = plugins_here->library_for(order);
  } catch (const std::exception& e) {
    return failed(422, e.what());
  }
  std::int64_t instances = 0;
  // Best effort: a holder that cannot be told to drop its successors is gone anyway (the next
  // step fails on it).
  auto abort_all = [&] {
    try {
      ask_each<bool>(
          self, "swap", holders, [](const std::string&, bool&) {},
          [&](const std::string&) { return caf::make_message(atoms::abort_atom_v); });
    } catch (const std::exception&) {
    }
  };
  try {
    // Every holder prepares its successors (other processes load the library themselves);
    // any failure drops them all.
    ask_each<std::int64_t>(
        self, "preparing the swap", holders,
        [&](const std::string&, std::int64_t& count) { instances += count; },
        [&](const std::string&) { return caf::make_message(atoms::swap_atom_v, order); });
  } catch (const std::exception& e) {
    abort_all();
    return failed(422, e.what());
  }
  if (instances == 0) {
    abort_all();
    return failed(409, fmt::format("no actor of this job runs a {} plugin", name_of(role)));
  }
  // A holder that fails to commit leaves the model half swapped: the job stops (the throw
  // ends the step loop like a failed step), and resumes from its last checkpoint.
  ask_each<bool>(
      self, "committing the swap", holders, [](const std::string&, bool&) {},
      [&](const std::string&) { return caf::make_message(atoms::commit_atom_v); });
  active[role] = library;
  const double pause =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  train_metrics->set_plugin(role, library.get());
  train_metrics->record_swap(role, true, pause);
  event(
      fmt::format("swapped the {} plugin after step {}: {} -> {} (instances replaced: {}; the "
                  "step loop paused {:.1f} ms)",
                  name_of(role), last_completed, one_line(before.get()), one_line(library.get()),
                  instances, pause * 1e3));
  nlohmann::json entry{{"step", last_completed},        {"role", std::string(name_of(role))},
                       {"outcome", "swapped"},          {"from", describe(before.get())},
                       {"to", describe(library.get())}, {"instances", instances},
                       {"pause_seconds", pause}};
  swap_history.push_back(entry);
  publish_status();
  return {200, entry};
}

}  // namespace troupe
