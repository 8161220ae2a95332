#pragma once

// A `troupe train` job in the background that pauses after a step (--pause-after), and
// `troupe ctl` for it, with a run directory of its own: how the control and monitoring tests
// drive a running job, as a user does from a second terminal.

#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/support/command_runs.hpp"

namespace troupe::testing {

inline std::string troupe_exe() {
  const char* path = std::getenv("TROUPE_EXE");
  if (path == nullptr) throw std::runtime_error("TROUPE_EXE is not set (run through meson test)");
  return path;
}

class controlled_job {
 public:
  /// Starts `troupe COMMAND ARGUMENTS --job NAME` in `dir` (its log: dir/job.log); COMMAND is
  /// train, launch or serve.
  controlled_job(std::filesystem::path dir, const std::string& name, const std::string& arguments,
                 const std::string& command = "train")
      : dir_(std::move(dir)), name_(name) {
    process_ = std::make_unique<background_command>(
        environment() + troupe_exe() + " " + command + " " + arguments + " --job " + name,
        dir_ / "job.log");
  }

  run_result ctl(const std::string& arguments) const {
    return run_command(environment() + troupe_exe() + " ctl " + name_ + " " + arguments);
  }
  /// The job's status ({} when it does not answer).
  nlohmann::json status() const {
    const run_result r = ctl("status --json");
    return r.exit_code == 0 ? nlohmann::json::parse(r.output) : nlohmann::json::object();
  }
  bool wait_until_paused() const {
    return eventually(60, [&] { return status().value("state", std::string()) == "paused"; });
  }
  /// The endpoint's URL, from the job's control.json.
  std::string control_url() const {
    return nlohmann::json::parse(std::ifstream(dir_ / "run" / name_ / "control.json")).at("url");
  }
  /// SIGTERM (a server drains and stops), then its exit status.
  int terminate() {
    ::kill(process_->pid(), SIGTERM);
    return process_->wait();
  }
  /// Resumes the job and waits for its exit status.
  int finish() {
    ctl("resume");
    return process_->wait();
  }
  std::string log() const {
    std::ifstream in(dir_ / "job.log");
    return {std::istreambuf_iterator<char>(in), {}};
  }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::string environment() const { return "env TROUPE_RUN_DIR=" + (dir_ / "run").string() + " "; }

  std::filesystem::path dir_;
  std::string name_;
  std::unique_ptr<background_command> process_;
};

}  // namespace troupe::testing
