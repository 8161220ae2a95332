// troupe train: trains the model of a topology on actors, with a progress line per step, an
// optional JSON-lines log, checkpoints and resume.

#include <memory>

#include "tools/troupe/commands.hpp"
#include "tools/troupe/training_run.hpp"

namespace troupe::cli {

void add_train_command(CLI::App& app, int& exit_code) {
  auto options = std::make_shared<train_options>();
  auto* command = app.add_subcommand(
      "train",
      "Train the model of a topology on actors, every actor in this process whatever its hosts "
      "(default: the shipped tiny.toml)");
  add_training_options(command, *options);
  command->callback(
      [options, &exit_code] { exit_code = run_training(*options, "troupe train", std::nullopt); });
}

}  // namespace troupe::cli
