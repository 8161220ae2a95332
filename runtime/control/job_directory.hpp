#pragma once

// Where a running job tells `troupe ctl` how to reach it. The job claims RUN/NAME, where RUN is
// $TROUPE_RUN_DIR, else $XDG_RUNTIME_DIR/troupe, else /tmp/troupe-UID, and writes there:
//   token         a fresh random token, readable only by its user (0600, directory 0700)
//   control.json  {"job", "url", "pid", "topology", "token_file"}
// Both go when the job ends. A request must carry the token: only the job's user can read it.

#include <filesystem>
#include <string>
#include <vector>

namespace troupe {

/// $TROUPE_RUN_DIR, else $XDG_RUNTIME_DIR/troupe, else /tmp/troupe-UID.
std::filesystem::path default_run_directory();

/// What control.json holds.
struct control_record {
  std::string job;
  std::string url;  ///< "http://127.0.0.1:PORT"
  long pid = 0;
  std::string topology;
  std::filesystem::path token_file;
  std::filesystem::path directory;  ///< where control.json was found
};

class job_directory {
 public:
  /// Claims RUN/NAME. When a live job holds NAME: with `exact`, throws troupe::error naming it;
  /// otherwise takes NAME-2, NAME-3, ... A directory left by a job that died is taken over.
  /// Writes a new token.
  job_directory(const std::filesystem::path& run_directory, const std::string& name, bool exact);
  /// Removes the token and control.json.
  ~job_directory();
  job_directory(const job_directory&) = delete;
  job_directory& operator=(const job_directory&) = delete;

  const std::string& name() const { return name_; }
  const std::string& token() const { return token_; }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path token_file() const { return path_ / "token"; }

  /// Writes control.json (atomically: a reader never sees half of it).
  void publish(const std::string& url, const std::string& topology);

 private:
  std::string name_;
  std::filesystem::path path_;
  std::string token_;
};

/// A job `troupe ctl` talks to, and its token.
struct job_handle {
  control_record record;
  std::string token;
};

/// Finds `job`: a name under `run_directory`, or a path to a job's directory or control.json.
/// Throws troupe::error naming what it looked for and the jobs that are running.
job_handle find_job(const std::string& job, const std::filesystem::path& run_directory);

/// The jobs with a control.json under `run_directory` whose process is alive.
std::vector<control_record> running_jobs(const std::filesystem::path& run_directory);

}  // namespace troupe
