#include "runtime/plugin/probe.hpp"

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "runtime/plugin/probe_process.hpp"
#include "runtime/plugin/probe_protocol.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view probe_name = "troupe-plugin-probe";
constexpr double default_deadline_seconds = 10;

std::atomic<std::uint64_t> probes_started{0};

/// Reports by the contents they describe. Never destroyed: a probe may finish during exit.
struct probe_cache {
  std::mutex mutex;
  std::map<plugin_file_stamp, plugin_probe_report> reports;
};

probe_cache& cache() {
  static auto* instance = new probe_cache();
  return *instance;
}

/// The folder libtroupe was loaded from (the probe is built and installed beside it).
fs::path libtroupe_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<const void*>(&plugin_probes_started), &info) == 0 ||
      info.dli_fname == nullptr)
    return {};
  std::error_code ec;
  return fs::weakly_canonical(info.dli_fname, ec).parent_path();
}

/// A probe's report records: the last stage it began, whether it ended, and the values.
struct probe_records {
  std::string stage;
  bool done = false;
  std::map<std::string, std::string> values;
  std::string value(const std::string& key) const {
    auto it = values.find(key);
    return it == values.end() ? std::string() : it->second;
  }
};

probe_records parse_records(const std::string& report) {
  probe_records records;
  std::istringstream lines(report);
  for (std::string line; std::getline(lines, line);) {
    auto [key, value] = probe_protocol::decode(line);
    if (key == "stage")
      records.stage = value;
    else if (key == "done")
      records.done = true;
    else
      records.values[key] = value;
  }
  return records;
}

/// Where the probe was when it died: "in init() of plugin 'x'".
std::string stage_description(const probe_records& records) {
  if (records.stage == "load")
    return "while loading the library (its static constructors or its dependencies)";
  if (records.stage == "entry") return "in troupe_plugin_entry()";
  if (records.stage == "init")
    return fmt::format("in init() of plugin '{}'", records.value("name"));
  return "before it loaded the library";
}

/// The last lines the probe printed, on one line ("" when it printed nothing).
std::string output_excerpt(const std::string& output) {
  std::vector<std::string> lines;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
  std::string excerpt;
  for (std::size_t i = lines.size() > 3 ? lines.size() - 3 : 0; i < lines.size(); ++i)
    excerpt += (excerpt.empty() ? "" : " | ") + lines[i];
  if (excerpt.size() > 400) excerpt = "..." + excerpt.substr(excerpt.size() - 400);
  return excerpt;
}

/// The failure of a probe that did not report its end.
void explain_death(const probe_process_result& run, const probe_records& records,
                   std::chrono::milliseconds deadline, plugin_probe_report& report) {
  const std::string where = stage_description(records);
  report.failure = plugin_load_failure::crashed;
  switch (run.how) {
    case probe_process_result::ending::signaled:
      report.cause = fmt::format("killed by {} {}", describe_signal(run.code), where);
      break;
    case probe_process_result::ending::exited:
      report.cause = fmt::format(
          "the process exited with status {} {}, before it reported a "
          "result (a library must not exit the process)",
          run.code, where);
      break;
    case probe_process_result::ending::timed_out:
      report.failure = plugin_load_failure::timed_out;
      report.cause = fmt::format(
          "still running {} after {:g} s, so it was killed (TROUPE_PLUGIN_PROBE_TIMEOUT sets this "
          "deadline in seconds)",
          where, std::chrono::duration<double>(deadline).count());
      break;
    case probe_process_result::ending::vanished:
      report.cause = fmt::format("the probe process ended {} and was reaped elsewhere", where);
      break;
  }
  report.cause += "; it was loaded in a probe process only, this process is unaffected";
  if (const auto excerpt = output_excerpt(run.output); !excerpt.empty())
    report.cause += fmt::format("; its last output: {}", excerpt);
}

plugin_probe_report interpret(const probe_process_result& run, std::chrono::milliseconds deadline) {
  plugin_probe_report report;
  report.probed = true;
  report.milliseconds = std::chrono::duration<double, std::milli>(run.took).count();
  const probe_records records = parse_records(run.report);
  if (auto kind = parse_plugin_kind(records.value("kind")); kind && records.values.count("name")) {
    report.table = true;
    report.name = records.value("name");
    report.version = records.value("version");
    report.kind = *kind;
  }
  if (records.values.count("failure") != 0) {
    report.failure = probe_protocol::parse_failure(records.value("failure"))
                         .value_or(plugin_load_failure::crashed);
    report.cause = records.value("cause");
  } else if (!records.done || run.how != probe_process_result::ending::exited || run.code != 0) {
    explain_death(run, records, deadline, report);
  }
  return report;
}

plugin_probe_report unchecked(std::string cause) {
  plugin_probe_report report;
  report.probed = true;
  report.failure = plugin_load_failure::unchecked;
  report.cause = std::move(cause);
  return report;
}

}  // namespace

std::optional<plugin_file_stamp> plugin_file_stamp::of(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return std::nullopt;
  plugin_file_stamp stamp;
  stamp.path = file.string();
  stamp.device = st.st_dev;
  stamp.inode = st.st_ino;
  stamp.size = static_cast<std::uint64_t>(st.st_size);
  stamp.mtime_ns =
      static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  return stamp;
}

std::chrono::milliseconds plugin_probe_deadline() {
  double seconds = default_deadline_seconds;
  if (const char* env = std::getenv("TROUPE_PLUGIN_PROBE_TIMEOUT"); env != nullptr && *env) {
    char* end = nullptr;
    const double parsed = std::strtod(env, &end);
    if (end != env && *end == '\0' && parsed > 0) seconds = parsed;
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000));
}

std::optional<fs::path> plugin_probe_executable(const fs::path& file) {
  if (const char* env = std::getenv("TROUPE_PLUGIN_PROBE"); env != nullptr && *env) {
    if (std::string_view(env) == "off") return std::nullopt;
    if (::access(env, X_OK) == 0) return fs::path(env);
    throw plugin_load_error(plugin_load_failure::unchecked, file,
                            fmt::format("TROUPE_PLUGIN_PROBE={} is not an executable", env));
  }
  const fs::path dir = libtroupe_dir();
  for (const fs::path& candidate : {dir / probe_name, dir / "troupe" / probe_name})
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  throw plugin_load_error(
      plugin_load_failure::unchecked, file,
      fmt::format("no {} in {} or {}/troupe to try the library in before loading it (it is built "
                  "and installed with libtroupe; TROUPE_PLUGIN_PROBE names another, or 'off' "
                  "loads libraries unprobed)",
                  probe_name, dir.string(), dir.string()));
}

plugin_probe_report probe_plugin(const fs::path& file, const fs::path& open_path,
                                 const std::optional<plugin_file_stamp>& stamp) {
  if (stamp) {
    std::lock_guard lock(cache().mutex);
    if (auto it = cache().reports.find(*stamp); it != cache().reports.end()) return it->second;
  }
  std::optional<fs::path> executable;
  try {
    executable = plugin_probe_executable(file);
  } catch (const plugin_load_error& e) {
    return unchecked(e.cause());
  }
  if (!executable) {
    static std::once_flag warned;
    std::call_once(warned, [] {
      spdlog::warn(
          "TROUPE_PLUGIN_PROBE=off: plugin libraries load unprobed; one that crashes "
          "takes this process with it");
    });
    return {};
  }
  const auto deadline = plugin_probe_deadline();
  plugin_probe_report report;
  try {
    ++probes_started;
    report = interpret(
        run_probe_process({executable->string(), open_path.string(), std::to_string(::getpid())},
                          deadline),
        deadline);
  } catch (const error& e) {
    return unchecked(e.what());
  }
  spdlog::debug("probed plugin {} in {:.1f} ms: {}", file.string(), report.milliseconds,
                report.failure ? report.cause : "loads");
  if (stamp && report.failure != plugin_load_failure::timed_out) {
    std::lock_guard lock(cache().mutex);
    cache().reports[*stamp] = report;
  }
  return report;
}

std::uint64_t plugin_probes_started() {
  return probes_started.load();
}

}  // namespace troupe
