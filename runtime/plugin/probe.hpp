#pragma once

// The plugin probe: before a library is loaded into this process, a short-lived child process
// (troupe-plugin-probe, built next to libtroupe) loads it the same way (dlopen, the entry, the
// table checks, init()) and reports each step. A library that crashes, exits or hangs there is
// a plugin_load_error naming it and the cause, and is never loaded here: a plugin cannot take
// down `troupe plugins list`, `topo check`, `train` or a running job it is swapped into.
//
// Settings (read at each probe):
//   TROUPE_PLUGIN_PROBE          the probe executable; "off" loads libraries unprobed
//   TROUPE_PLUGIN_PROBE_TIMEOUT  the deadline in seconds (default 10)

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "runtime/plugin/kind.hpp"
#include "runtime/plugin/load_error.hpp"

namespace troupe {

/// What a probe found.
struct plugin_probe_report {
  bool probed = false;  ///< false when probing is off: nothing is known
  bool table = false;   ///< the entry returned a table that passed the checks
  std::string name;     ///< the table's, when `table`
  std::string version;
  plugin_kind kind = plugin_kind::attention;
  std::optional<plugin_load_failure> failure;  ///< set when the load failed, at any step
  std::string cause;                           ///< why, when `failure` is set
  double milliseconds = 0;                     ///< how long the probe process ran
};

/// Which contents of a file a probe saw: a changed file (rebuilt, replaced) is probed again.
struct plugin_file_stamp {
  std::string path;
  std::uint64_t device = 0, inode = 0, size = 0;
  std::int64_t mtime_ns = 0;
  auto operator<=>(const plugin_file_stamp&) const = default;

  /// The stamp of `file` now (symlinks followed); nullopt when it cannot be read.
  static std::optional<plugin_file_stamp> of(const std::filesystem::path& file);
};

/// Probes `open_path` (the library, or a private copy of `file`); `file` names it in messages.
/// The result is cached under `stamp` (the contents of `file` the copy was made from) when one is
/// given; a timed-out probe is not cached. Throws nothing: every failure is in the report.
plugin_probe_report probe_plugin(const std::filesystem::path& file,
                                 const std::filesystem::path& open_path,
                                 const std::optional<plugin_file_stamp>& stamp);

/// The probe executable: TROUPE_PLUGIN_PROBE, else troupe-plugin-probe next to libtroupe (the
/// build tree) or in the troupe/ folder beside it (installed). nullopt when probing is off.
/// Throws plugin_load_error (unchecked) naming where it looked when there is none.
std::optional<std::filesystem::path> plugin_probe_executable(const std::filesystem::path& file);

/// How long a probe may run: TROUPE_PLUGIN_PROBE_TIMEOUT seconds, default 10.
std::chrono::milliseconds plugin_probe_deadline();

/// How many probe processes this process has started (a cached result starts none).
std::uint64_t plugin_probes_started();

}  // namespace troupe
