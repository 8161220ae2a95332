#pragma once

// What `troupe train` and `troupe launch` share: their options, and running one process's part
// of a training job with a progress line, a JSON-lines log, signals and exit codes.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "runtime/cluster/cluster.hpp"

namespace troupe::cli {

struct train_options {
  std::string file;
  std::vector<std::string> overrides;
  std::int64_t steps = 0;
  std::string log_json;
  std::string checkpoint_dir;
  bool no_checkpoint = false;
  std::string resume;
  int threads = 0;
  bool quiet = false;
  std::string job;  ///< the control endpoint's job name (troupe ctl JOB)
  std::int64_t pause_after = 0;
};

/// Adds the options both commands take to `command`.
void add_training_options(CLI::App* command, train_options& options);

/// Runs the job of `options.file`: the whole of it in this process when `cluster` is empty,
/// else this process's part (rank 0 coordinates and reports; the others serve their actors).
/// `command` prefixes the messages ("troupe train"). Returns the exit code.
int run_training(const train_options& options, const std::string& command,
                 std::optional<cluster_options> cluster);

}  // namespace troupe::cli
