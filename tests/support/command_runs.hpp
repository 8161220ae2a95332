#pragma once

// Running commands in tests the way a user does: a shell line's output and exit status, scratch
// directories per test process, and the JSON-lines logs `troupe train --log-json` writes.

#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace troupe::testing {

struct run_result {
  int exit_code = -1;
  std::string output;  ///< stdout and stderr together
};

/// Runs `command` through /bin/sh with stderr joined to stdout.
inline run_result run_command(const std::string& command) {
  run_result result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  std::array<char, 4096> buffer{};
  for (std::size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0;)
    result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

/// A command running in the background (through /bin/sh, output to `log`), as a user starts a
/// job in one terminal and controls it from another. Killed (SIGTERM, then SIGKILL) if still
/// running when destroyed.
class background_command {
 public:
  background_command(const std::string& command, const std::filesystem::path& log) {
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string line = "exec " + command + " > '" + log.string() + "' 2>&1";
      ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~background_command() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 100 && !exited(); ++i) ::usleep(100'000);
    if (!exited()) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  background_command(const background_command&) = delete;
  background_command& operator=(const background_command&) = delete;

  pid_t pid() const { return pid_; }
  /// Waits for the exit; returns the exit status (-1 when killed by a signal).
  int wait() {
    if (pid_ > 0 && !done_) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
      record(status);
    }
    return exit_code_;
  }
  bool exited() {
    if (done_) return true;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) record(status);
    return done_;
  }

 private:
  void record(int status) {
    done_ = true;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  pid_t pid_ = -1;
  bool done_ = false;
  int exit_code_ = -1;
};

/// Polls `condition` every `interval_ms` (50 by default) for up to `seconds`; whether it became
/// true.
template <class Condition>
bool eventually(double seconds, Condition condition, int interval_ms = 50) {
  for (int i = 0; i < static_cast<int>(seconds * 1000 / interval_ms); ++i) {
    if (condition()) return true;
    ::usleep(static_cast<useconds_t>(interval_ms) * 1000);
  }
  return condition();
}

/// The test process's scratch folders, removed when it exits normally (TROUPE_KEEP_SCRATCH=1
/// keeps them to look at after a failure).
class scratch_folders {
 public:
  static void remember(const std::filesystem::path& folder) {
    static scratch_folders folders;
    folders.folders_.insert(folder);
  }
  ~scratch_folders() {
    const char* keep = std::getenv("TROUPE_KEEP_SCRATCH");
    if (keep != nullptr && std::string(keep) == "1") return;
    for (const auto& folder : folders_) {
      std::error_code ignored;
      std::filesystem::remove_all(folder, ignored);
    }
  }

 private:
  std::set<std::filesystem::path> folders_;
};

/// An empty directory of this test process: /tmp/troupe-SUITE-PID/NAME (all of
/// /tmp/troupe-SUITE-PID goes when the process exits).
inline std::filesystem::path scratch_dir(const std::string& suite, const std::string& name) {
  const std::filesystem::path root = std::filesystem::temp_directory_path() /
                                     ("troupe-" + suite + "-" + std::to_string(::getpid()));
  scratch_folders::remember(root);
  const std::filesystem::path dir = root / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// The records of a JSON-lines file, in order.
inline std::vector<nlohmann::json> read_json_lines(const std::filesystem::path& file) {
  std::vector<nlohmann::json> records;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  return records;
}

}  // namespace troupe::testing
