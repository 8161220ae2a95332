// `troupe ctl JOB ACTION`: talks to a running job's control endpoint.

#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/control/http_client.hpp"
#include "runtime/control/job_directory.hpp"
#include "runtime/core/error.hpp"
#include "runtime/placement/expert_load.hpp"
#include "tools/troupe/commands.hpp"

namespace troupe::cli {

namespace {

struct ctl_options {
  std::string job;
  std::string action;
  std::string plugin;
  std::string library;
  std::string builtin;  ///< the built-in GEMM's precision, fp32 or bf16; empty: not asked for
  std::string load;     ///< rebalance: a file of expert loads; empty: the load the job observed
  bool json = false;
  std::string run_directory;
  int timeout = 900;  // longer than the job's own 10 minutes for a step boundary
};

/// The plugins of a status, one line per role.
void print_plugins(const nlohmann::json& s) {
  const nlohmann::json plugins = s.value("plugins", nlohmann::json::object());
  for (const auto& [role, p] : plugins.items())
    fmt::print("  {:<9} {} {} (generation {}){}\n", role, p.value("plugin", ""),
               p.value("version", ""), p.value("generation", 0),
               p.contains("library") ? "  " + p.value("library", "") : std::string());
}

/// A server's status (`troupe serve` with a control endpoint).
void print_server_status(const nlohmann::json& s) {
  fmt::print("server {} (pid {}): {} {} at {}, {} decoding, {} queued\n", s.value("job", ""),
             s.value("pid", 0L), s.value("state", "?"), s.value("model", ""), s.value("url", ""),
             s.value("decoding", 0L), s.value("queued", 0L));
  if (const auto topology = s.value("topology", std::string()); !topology.empty())
    fmt::print("topology {}\n", topology);
  const nlohmann::json instances = s.value("instances", nlohmann::json::array());
  fmt::print("instances {}{}\n", instances.dump(),
             s.value("expert_shards", false) ? " (with expert shards)" : "");
  for (const char* role : {"decode", "expert"})
    for (const auto& d : s.value(fmt::format("{}_processes", role), nlohmann::json::array()))
      fmt::print("  {} process rank {} on {}: {}{}\n", role, d.value("rank", 0),
                 d.value("host", ""), d.value("state", ""),
                 d.contains("error") ? ": " + d.value("error", "") : std::string());
  print_plugins(s);
  for (const auto& swap : s.value("swaps", nlohmann::json::array()))
    fmt::print("  swap: {} {}{}\n", swap.value("role", ""), swap.value("outcome", ""),
               swap.contains("error") ? ": " + swap.value("error", "") : std::string());
  for (const auto& r : s.value("rebalances", nlohmann::json::array()))
    fmt::print("  rebalance: {} ({} expert copies moved){}\n", r.value("outcome", ""),
               r.value("moved", 0L),
               r.contains("error") ? ": " + r.value("error", "") : std::string());
}

void print_status(const nlohmann::json& s) {
  if (s.value("kind", std::string()) == "server") return print_server_status(s);
  fmt::print("job {} (pid {}): {} after step {}/{}, loss {:.4f}, {:.0f} tok/s\n",
             s.value("job", ""), s.value("pid", 0L), s.value("state", "?"), s.value("step", 0L),
             s.value("total_steps", 0L), s.value("loss", 0.0), s.value("tokens_per_s", 0.0));
  fmt::print("topology {}\n", s.value("topology", ""));
  if (const auto metrics = s.value("metrics_url", std::string()); !metrics.empty())
    fmt::print("metrics {}\n", metrics);
  if (const auto checkpoint = s.value("last_checkpoint", std::string()); !checkpoint.empty())
    fmt::print("last checkpoint {}\n", checkpoint);
  print_plugins(s);
  for (const auto& swap : s.value("swaps", nlohmann::json::array()))
    fmt::print("  swap after step {}: {} {}{}\n", swap.value("step", 0L), swap.value("role", ""),
               swap.value("outcome", ""),
               swap.contains("error") ? ": " + swap.value("error", "") : std::string());
  for (const auto& r : s.value("rebalances", nlohmann::json::array()))
    fmt::print("  rebalance after step {}: {} ({} experts moved){}\n", r.value("step", 0L),
               r.value("outcome", ""), r.value("moved", 0L),
               r.contains("error") ? ": " + r.value("error", "") : std::string());
}

void print_reply(const std::string& action, const nlohmann::json& r) {
  if (action == "pause" || action == "resume")
    fmt::print("{} after step {}\n", r.value("paused", false) ? "paused" : "running",
               r.value("step", 0L));
  else if (action == "checkpoint")
    fmt::print("checkpoint {} (step {})\n", r.value("checkpoint", ""), r.value("step", 0L));
  else if (action == "swap" && !r.contains("step"))  // a server's
    fmt::print(
        "swapped the {} plugin: {} {} -> {} {} (generation {}, {} plugin instances); the steps "
        "were held {:.1f} ms\n",
        r.value("role", ""), r["from"].value("plugin", ""), r["from"].value("version", ""),
        r["to"].value("plugin", ""), r["to"].value("version", ""), r["to"].value("generation", 0),
        r.value("instances", 0L), r.value("pause_seconds", 0.0) * 1e3);
  else if (action == "rebalance" && r.contains("instances")) {  // a server's
    fmt::print(
        "re-placed the experts from the {} load: {} ({} expert copies moved, {:.2f} MiB); the "
        "steps were held {:.1f} ms\n",
        r.value("load", ""), r.value("outcome", ""), r.value("moved", 0L),
        static_cast<double>(r.value("bytes", 0L)) / (1 << 20), r.value("pause_seconds", 0.0) * 1e3);
    const nlohmann::json instances = r.value("instances", nlohmann::json::object());
    for (const auto& [engine, i] : instances.items())
      fmt::print("  {}: {} ({} copies)\n", engine, i.value("outcome", ""), i.value("moved", 0L));
  } else if (action == "swap")
    fmt::print(
        "swapped the {} plugin after step {}: {} {} -> {} {} (generation {}); the step loop "
        "paused {:.1f} ms\n",
        r.value("role", ""), r.value("step", 0L), r["from"].value("plugin", ""),
        r["from"].value("version", ""), r["to"].value("plugin", ""), r["to"].value("version", ""),
        r["to"].value("generation", 0), r.value("pause_seconds", 0.0) * 1e3);
  else if (action == "rebalance") {
    fmt::print(
        "rebalanced the experts after step {}: {} moved ({:.2f} MiB of weights and moments); the "
        "step loop paused {:.1f} ms\n",
        r.value("step", 0L), r.value("moved", 0L),
        static_cast<double>(r.value("bytes", 0L)) / (1 << 20), r.value("pause_seconds", 0.0) * 1e3);
    const nlohmann::json layers = r.value("layers", nlohmann::json::object());
    for (const auto& [layer, l] : layers.items())
      fmt::print("  layer {}: largest shard load / mean {:.3f} -> {:.3f}\n", layer,
                 l.value("before", 0.0), l.value("after", 0.0));
  }
}

int run_ctl(const ctl_options& o) {
  const std::filesystem::path run_directory =
      o.run_directory.empty() ? default_run_directory() : std::filesystem::path(o.run_directory);
  if (o.job.empty()) {
    std::vector<control_record> jobs;
    try {
      jobs = running_jobs(run_directory);
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe ctl: {}\n", e.what());
      return exit_unavailable;
    }
    if (jobs.empty()) fmt::print("no job is running under {}\n", run_directory.string());
    for (const auto& j : jobs) fmt::print("{}  {}  pid {}  {}\n", j.job, j.url, j.pid, j.topology);
    return exit_ok;
  }
  if (o.action.empty()) {
    fmt::print(stderr,
               "troupe ctl {}: which action? status, pause, resume, checkpoint, swap or "
               "rebalance\n",
               o.job);
    return exit_bad_input;
  }
  nlohmann::json body = nlohmann::json::object();
  if (o.action == "swap") {
    if (o.plugin.empty() || o.library.empty() == o.builtin.empty()) {
      fmt::print(stderr,
                 "troupe ctl {} swap: needs --plugin ROLE and either --library PATH or --builtin "
                 "[fp32|bf16]\n",
                 o.job);
      return exit_bad_input;
    }
    body["plugin"] = o.plugin;
    if (!o.builtin.empty()) body["builtin"] = o.builtin;
    // The job resolves paths from its own directory: send an absolute one.
    if (!o.library.empty())
      body["library"] =
          o.library.find('/') != std::string::npos || std::filesystem::exists(o.library)
              ? std::filesystem::absolute(o.library).string()
              : o.library;
  }
  if (!o.load.empty() && o.action != "rebalance") {
    fmt::print(stderr, "troupe ctl {} {}: --load is for rebalance\n", o.job, o.action);
    return exit_bad_input;
  }
  if (!o.load.empty()) {
    try {
      const expert_loads loads = read_expert_loads(o.load);
      nlohmann::json rows = nlohmann::json::object();
      for (std::size_t l = 0; l < loads.layers.size(); ++l)
        rows[loads.layers[l]] = std::vector<float>(
            loads.load.begin() + static_cast<std::ptrdiff_t>(l * loads.experts),
            loads.load.begin() + static_cast<std::ptrdiff_t>((l + 1) * loads.experts));
      body["load"] = rows;
    } catch (const std::exception& e) {
      fmt::print(stderr, "troupe ctl {} rebalance: {}\n", o.job, e.what());
      return exit_bad_input;
    }
  }
  job_handle job;
  http_response response;
  try {
    job = find_job(o.job, run_directory);
    response = http_call(job.record.url, o.action == "status" ? "GET" : "POST", "/v1/" + o.action,
                         job.token, body.dump(), o.timeout);
  } catch (const std::exception& e) {
    fmt::print(stderr, "troupe ctl: {}\n", e.what());
    return exit_unavailable;
  }
  nlohmann::json reply;
  try {
    reply = nlohmann::json::parse(response.body);
  } catch (const std::exception&) {
    reply = {{"error", response.body}};
  }
  if (response.status != 200) {
    fmt::print(stderr, "troupe ctl {} {}: {} (HTTP {})\n", job.record.job, o.action,
               reply.value("error", response.body), response.status);
    return response.status == 503 ? exit_unavailable : exit_bad_input;
  }
  if (o.json)
    fmt::print("{}\n", reply.dump(2));
  else if (o.action == "status")
    print_status(reply);
  else
    print_reply(o.action, reply);
  return exit_ok;
}

}  // namespace

void add_ctl_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<ctl_options>();
  auto* command = app.add_subcommand(
      "ctl",
      "Control a running job or server: status, pause, resume, checkpoint, swap, rebalance "
      "(without JOB: list them)");
  command->add_option(
      "JOB", options->job,
      "The job's or server's name (troupe train and troupe serve print it), or its control "
      "directory");
  command
      ->add_option("ACTION", options->action,
                   "status, pause, resume, checkpoint, swap or rebalance (re-place the routed "
                   "experts on the expert shards for their load, moving weights and moments)")
      ->check(CLI::IsMember({"status", "pause", "resume", "checkpoint", "swap", "rebalance"}));
  command->add_option("--plugin", options->plugin,
                      "swap: the role (attention, moe, mtp, gemm) or the running plugin's name");
  command->add_option("--library", options->library,
                      "swap: the new plugin library (loaded under a fresh name)");
  auto* builtin =
      command
          ->add_option("--builtin", options->builtin,
                       "swap: the runtime's built-in GEMM (role gemm), in fp32 (the default) or "
                       "bf16 (cuBLASLt on the tensor cores; every stage on a GPU)")
          ->expected(0, 1)
          ->check(CLI::IsMember({"fp32", "bf16"}));
  command->add_option("--load", options->load,
                      "rebalance: per-layer expert loads to balance (a JSON matrix, a --log-json "
                      "file or a Prometheus query result, as troupe eplb reads; default: the "
                      "load the job observed since its start or its last rebalance)");
  command->add_flag("--json", options->json, "Print the job's JSON reply");
  command->add_option("--run-dir", options->run_directory,
                      "Where jobs leave their control files (default: $TROUPE_RUN_DIR, "
                      "$XDG_RUNTIME_DIR/troupe or /tmp/troupe-UID)");
  command
      ->add_option("--timeout", options->timeout,
                   "Seconds to wait for the reply (a swap waits for a step boundary)")
      ->check(CLI::PositiveNumber);
  command->callback([options, builtin, &exit_code] {
    // `--builtin` alone is the FP32 GEMM, as it was when it took no value.
    if (builtin->count() > 0 && options->builtin.empty()) options->builtin = "fp32";
    exit_code = run_ctl(*options);
  });
}

}  // namespace troupe::cli
