#include "runtime/control/job_directory.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace troupe {

namespace fs = std::filesystem;

namespace {

bool process_alive(long pid) {
  return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
}

std::string random_token() {
  std::random_device device;  // /dev/urandom on Linux
  std::string token;
  for (int i = 0; i < 8; ++i) token += fmt::format("{:08x}", device());
  return token;
}

/// Writes `text` to `file` with mode 0600, whatever the umask, replacing what was there.
void write_private(const fs::path& file, const std::string& text) {
  const fs::path partial = file.string() + ".partial";
  const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
                        S_IRUSR | S_IWUSR);
  if (fd < 0) fail("{}: cannot write: {}", partial.string(), std::strerror(errno));
  const bool written = ::fchmod(fd, S_IRUSR | S_IWUSR) == 0 &&
                       ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const int saved = errno;
  ::close(fd);
  if (!written) fail("{}: cannot write: {}", partial.string(), std::strerror(saved));
  fs::rename(partial, file);
}

/// Fails unless `path` is this user's and nobody else may write it: another user who owned the
/// run directory could swap control.json for one that sends the token to their own server.
void check_private(const fs::path& path, bool follow_link = false) {
  struct stat info {};
  if ((follow_link ? ::stat(path.c_str(), &info) : ::lstat(path.c_str(), &info)) != 0)
    return;  // not there (yet)
  if (info.st_uid != ::getuid())
    fail(
        "{}: owned by uid {}, not by you (uid {}); refusing to use it for control files (set "
        "TROUPE_RUN_DIR to a directory of your own)",
        path.string(), info.st_uid, ::getuid());
  if ((info.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (info.st_mode & S_ISVTX) == 0)
    fail("{}: others may write it (mode {:o}); refusing to use it for control files", path.string(),
         info.st_mode & 07777);
}

std::optional<control_record> read_record(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  try {
    const auto j = nlohmann::json::parse(in);
    control_record r;
    r.job = j.at("job").get<std::string>();
    r.url = j.at("url").get<std::string>();
    r.pid = j.at("pid").get<long>();
    r.topology = j.value("topology", std::string());
    r.token_file = j.at("token_file").get<std::string>();
    r.directory = file.parent_path();
    return r;
  } catch (const std::exception& e) {
    fail("{}: not a troupe control file: {}", file.string(), e.what());
  }
}

}  // namespace

fs::path default_run_directory() {
  if (const char* dir = std::getenv("TROUPE_RUN_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* dir = std::getenv("XDG_RUNTIME_DIR"); dir != nullptr && *dir != '\0')
    return fs::path(dir) / "troupe";
  return fs::path("/tmp") / fmt::format("troupe-{}", ::getuid());
}

job_directory::job_directory(const fs::path& run_directory_given, const std::string& name,
                             bool exact) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    fail("job name '{}': use letters, digits, '-', '_' or '.' (no '/')", name);
  const fs::path run_directory = fs::absolute(run_directory_given);
  std::error_code ec;
  fs::create_directories(run_directory.parent_path(), ec);
  // Created private whatever the umask (under umask 002 a group could write it otherwise).
  if (::mkdir(run_directory.c_str(), S_IRWXU) != 0 && errno != EEXIST)
    fail("{}: cannot create the run directory: {}", run_directory.string(), std::strerror(errno));
  check_private(run_directory, true);
  for (int attempt = 1;; ++attempt) {
    name_ = attempt == 1 ? name : fmt::format("{}-{}", name, attempt);
    path_ = run_directory / name_;
    const auto existing = read_record(path_ / "control.json");
    if (existing && process_alive(existing->pid)) {
      if (exact)
        fail("job '{}' is running already (pid {}, {}); pick another --job name", name_,
             existing->pid, existing->url);
      continue;
    }
    break;
  }
  if (::mkdir(path_.c_str(), S_IRWXU) != 0 && errno != EEXIST)
    fail("{}: cannot create the job directory: {}", path_.string(), std::strerror(errno));
  struct stat info {};
  if (::lstat(path_.c_str(), &info) != 0 || !S_ISDIR(info.st_mode) || info.st_uid != ::getuid())
    fail("{}: not a directory of yours; refusing to use it for control files", path_.string());
  // Ours (perhaps left by a job that died): private again, whatever it was.
  ::chmod(path_.c_str(), S_IRWXU);
  token_ = random_token();
  write_private(token_file(), token_ + "\n");
}

job_directory::~job_directory() {
  std::error_code ec;
  fs::remove(path_ / "control.json", ec);
  fs::remove(token_file(), ec);
  fs::remove(path_, ec);  // only when empty
}

void job_directory::publish(const std::string& url, const std::string& topology) {
  const nlohmann::json record{{"job", name_},
                              {"url", url},
                              {"pid", static_cast<long>(::getpid())},
                              {"topology", topology},
                              {"token_file", token_file().string()}};
  write_private(path_ / "control.json", record.dump(2) + "\n");
}

std::vector<control_record> running_jobs(const fs::path& run_directory) {
  std::vector<control_record> jobs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_directory, ec)) {
    try {
      if (auto r = read_record(entry.path() / "control.json"); r && process_alive(r->pid))
        jobs.push_back(*r);
    } catch (const error&) {
    }
  }
  std::sort(jobs.begin(), jobs.end(), [](const auto& a, const auto& b) { return a.job < b.job; });
  return jobs;
}

job_handle find_job(const std::string& job, const fs::path& run_directory) {
  fs::path file;
  if (job.find('/') != std::string::npos || fs::exists(job))
    file = fs::is_directory(job) ? fs::path(job) / "control.json" : fs::path(job);
  else
    file = run_directory / job / "control.json";
  check_private(file.parent_path().parent_path(), true);  // the run directory
  check_private(file.parent_path());
  check_private(file);
  auto record = read_record(file);
  if (!record || !process_alive(record->pid)) {
    std::string running;
    for (const auto& r : running_jobs(run_directory))
      running += fmt::format("\n  {} ({}, pid {}, {})", r.job, r.url, r.pid, r.topology);
    fail("no running job '{}' ({} {}); {}", job, file.string(),
         record ? fmt::format("names pid {}, which is gone", record->pid)
                : std::string("does not exist"),
         running.empty() ? fmt::format("no job is running under {}", run_directory.string())
                         : fmt::format("running under {}:{}", run_directory.string(), running));
  }
  // Only a loopback URL, and the token next to control.json (not wherever the file says).
  const bool loopback =
      record->url.rfind("http://127.", 0) == 0 || record->url.rfind("http://[::1]:", 0) == 0;
  if (!loopback)
    fail("{}: the URL {} is not a loopback address; refusing to send the token there",
         file.string(), record->url);
  record->token_file = record->directory / "token";
  check_private(record->token_file);
  std::ifstream in(record->token_file);
  std::string token;
  if (!(in >> token))
    fail("{}: cannot read the job's token (it is readable only by the user who started the job)",
         record->token_file.string());
  return {*record, token};
}

}  // namespace troupe
